"""Tests for backup.check: every backup in a location checked, its structure always and
its content on request, without changing anything there.

Each damage is made to real backups (made through the library), in a real directory
and in the in-memory storage alike: a check must find the same in both. What only a
directory can hold (a partial file of a writer, another program's hidden files) is
tested in the integration tests.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup.check import (
    DAMAGED_STATUSES,
    CheckReport,
    CheckRow,
    CheckStatus,
    check_backups,
    parse_subset,
    subset_part,
)
from backup.errors import ConfigError, StorageError
from backup.storage import LocalStorage, Location
from backup.storage.base import BackupStorage
from support.backups import START, make_backups, make_source
from support.clock import fixed_now
from support.storage import Fault, FaultyStorage, MemoryStorage, put_object, read_object

CHECKED_AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MUTATING = ("ensure", "begin", "write", "commit", "delete", "clean_partials", "write_record", "lock")


@dataclass
class Place:
    """A backup location under test: its storage (to make and damage backups in), and
    what ``check_backups`` is given (a directory's path, or the storage itself)."""

    storage: BackupStorage
    location: Location
    tmp: Path

    def make(self, count: int = 1, prefix: str = "daily", **config: Any) -> list[str]:
        start = START + timedelta(days=len(self.names()))  # never two backups in one second
        return make_backups(self.tmp, prefix, count, start, storage=self.storage, **config)

    def add_big_file(self) -> None:
        """Give the source a 200 KB file that does not compress: an archive large enough
        that damage past its start leaves its first header (our mark) readable."""
        make_source(self.tmp / "source")
        (self.tmp / "source" / "big.bin").write_bytes(random.Random(7).randbytes(200_000))

    def names(self) -> list[str]:
        return [info.name for info in self.storage.list_objects()]

    def archive(self, backup_id: str) -> str:
        (name,) = [name for name in self.names() if name.startswith(backup_id + ".tar")]
        return name

    def manifest(self, backup_id: str) -> str:
        return backup_id + ".manifest.json"

    def read(self, name: str) -> bytes:
        return read_object(self.storage, name)

    def replace(self, name: str, data: bytes) -> None:
        self.storage.delete(name)
        put_object(self.storage, name, data)

    def truncate(self, name: str, by: int = 100) -> None:
        self.replace(name, self.read(name)[:-by])

    def flip(self, name: str) -> None:
        """Flip every bit of the byte in the middle of an object (its size stays)."""
        data = bytearray(self.read(name))
        data[len(data) // 2] ^= 0xFF
        self.replace(name, bytes(data))

    def state(self) -> dict[str, bytes]:
        return {name: self.read(name) for name in self.names()}

    def check(self, **options: object) -> CheckReport:
        return check_backups(self.location, now=fixed_now(CHECKED_AT), **options)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "memory"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "local":
        storage = LocalStorage(tmp_path / "backups")
        storage.ensure()
        return Place(storage, storage.directory, tmp_path)
    memory = MemoryStorage("memory://backups")
    return Place(memory, memory, tmp_path)


def statuses(report: CheckReport) -> dict[str, str]:
    return {row.backup_id: row.status for row in report.rows}


def only(report: CheckReport, backup_id: str) -> CheckRow:
    (row,) = [row for row in report.rows if row.backup_id == backup_id]
    return row


# --- good backups -------------------------------------------------------------------------


def test_good_backups_pass_the_structural_check_without_a_data_read(place: Place) -> None:
    ids = place.make(3)
    report = place.check()
    assert [row.backup_id for row in report.rows] == ids
    assert statuses(report) == dict.fromkeys(ids, "ok")
    assert report.ok and report.damaged == []
    assert not any(row.data_checked for row in report.rows)
    first = report.rows[0]
    assert first.archive == place.storage.describe(place.archive(ids[0]))
    assert first.manifest == place.storage.describe(place.manifest(ids[0]))
    assert first.size == len(place.read(place.archive(ids[0])))
    assert report.summary() == f"{place.storage.location}: 3 backups checked: 3 OK; data not read"


def test_read_data_reads_every_backup(place: Place) -> None:
    ids = place.make(2)
    report = place.check(read_data=True)
    assert statuses(report) == dict.fromkeys(ids, "ok")
    assert all(row.data_checked for row in report.rows)
    assert report.summary().endswith("2 backups checked: 2 OK; data read for 2 of 2")


def test_the_check_changes_nothing_and_takes_no_lock(place: Place) -> None:
    place.make(2)
    place.make(1, include_manifest=False)
    place.truncate(place.archive(place.make(1)[0]))
    before = place.state()
    faulty = FaultyStorage(place.storage)
    check_backups(faulty, read_data=True)
    assert place.state() == before
    assert [op for op, _ in faulty.calls if op in MUTATING] == []


def test_the_structural_check_reads_no_archive(place: Place) -> None:
    place.make(3)
    counting = FaultyStorage(place.storage)
    check_backups(counting)
    assert {name for name in counting.called("open_read") if name and ".tar" in name} == set()


def test_progress_names_the_backup_being_read(place: Place) -> None:
    ids = place.make(2)
    seen: list[tuple[str, int, int]] = []
    place.check(read_data=True, progress=lambda backup_id, entries, done: seen.append((backup_id, entries, done)))
    assert list(dict.fromkeys(backup_id for backup_id, _, _ in seen)) == ids
    assert all(entries > 0 for _, entries, _ in seen)


def test_a_prefix_limits_the_check_to_its_backups(place: Place) -> None:
    daily = place.make(2, prefix="daily")
    place.make(1, prefix="weekly")
    report = place.check(prefix="daily")
    assert [row.backup_id for row in report.rows] == daily
    assert "(prefix 'daily')" in report.summary()


# --- damage -------------------------------------------------------------------------------


def test_a_truncated_archive_is_damaged_without_reading_it(place: Place) -> None:
    (good, cut) = place.make(2)
    recorded = len(place.read(place.archive(cut)))
    place.truncate(place.archive(cut), by=100)
    report = place.check()
    assert statuses(report) == {good: "ok", cut: "damaged"}
    row = only(report, cut)
    assert row.detail == (
        f"{place.storage.describe(place.archive(cut))}: archive is {recorded - 100} bytes, manifest says {recorded}"
    )
    assert not row.data_checked and not report.ok
    assert report.damaged == [row]
    assert "2 backups checked: 1 OK, 1 damaged; data not read" in report.summary()


def test_a_truncated_archive_is_not_read_even_with_read_data(place: Place) -> None:
    (cut,) = place.make(1)
    place.truncate(place.archive(cut))
    row = only(place.check(read_data=True), cut)
    assert row.status == "damaged" and "manifest says" in row.detail
    assert not row.data_checked


@pytest.mark.parametrize("compression", ["gz", "zst", ""])
def test_a_flipped_byte_is_found_only_by_reading_the_data(place: Place, compression: str) -> None:
    (good, flipped) = place.make(2, compression=compression)
    place.flip(place.archive(flipped))
    assert statuses(place.check()) == {good: "ok", flipped: "ok"}  # same size: nothing to see
    report = place.check(read_data=True)
    assert statuses(report) == {good: "ok", flipped: "damaged"}
    row = only(report, flipped)
    assert row.data_checked and row.problems and row.detail
    assert "\n" not in row.detail
    assert row.detail.split(" (and ")[0] in row.problems


def test_a_deleted_archive_leaves_its_manifest_as_a_missing_archive(place: Place) -> None:
    (kept, lost) = place.make(2)
    archive = place.archive(lost)
    recorded = len(place.read(archive))
    place.storage.delete(archive)
    report = place.check(read_data=True)
    assert statuses(report) == {kept: "ok", lost: "missing archive"}
    row = only(report, lost)
    assert row.archive == place.storage.describe(archive)
    assert row.size == recorded and not row.data_checked
    assert row.detail.startswith(f"{place.storage.describe(archive)}: archive not found")
    assert not report.ok


def test_a_deleted_manifest_cannot_be_told_from_a_backup_made_without_one(place: Place) -> None:
    (backup_id,) = place.make(1)
    place.storage.delete(place.manifest(backup_id))
    row = only(place.check(), backup_id)
    assert (row.status, row.manifest, row.ok) == ("no manifest", None, True)
    assert "lost" in row.detail
    assert only(place.check(read_data=True), backup_id).status == "ok, no checksums"


@pytest.mark.parametrize(
    "garbage",
    [b"{not json", b"", b"\xff\xfe", json.dumps({"format": "obs-backup-manifest", "version": 99}).encode()],
    ids=["bad-json", "empty", "not-utf8", "unknown-version"],
)
def test_a_corrupt_manifest_is_a_bad_manifest(place: Place, garbage: bytes) -> None:
    (good, broken) = place.make(2)
    place.replace(place.manifest(broken), garbage)
    report = place.check()
    assert statuses(report) == {good: "ok", broken: "bad manifest"}
    assert place.storage.describe(place.manifest(broken)) in only(report, broken).detail
    row = only(place.check(read_data=True), broken)
    assert row.status == "bad manifest" and row.data_checked
    assert row.detail.endswith("; the archive reads to the end")


def test_a_corrupt_manifest_of_a_damaged_archive_says_both(place: Place) -> None:
    place.add_big_file()
    (broken,) = place.make(1)
    place.replace(place.manifest(broken), b"{not json")
    place.truncate(place.archive(broken), by=30)
    row = only(place.check(read_data=True), broken)
    assert row.status == "bad manifest"
    assert "; and " in row.detail and row.problems


def test_a_manifest_copied_from_another_backup_is_a_bad_manifest(place: Place) -> None:
    (first, second) = place.make(2)
    place.replace(place.manifest(second), place.read(place.manifest(first)))
    row = only(place.check(), second)
    assert row.status == "bad manifest"
    assert f"it is the manifest of {first!r}" in row.detail


def test_a_manifest_with_a_bad_time_is_a_bad_manifest(place: Place) -> None:
    (backup_id,) = place.make(1)
    data = json.loads(place.read(place.manifest(backup_id)))
    data["created_at"] = "yesterday"
    place.replace(place.manifest(backup_id), json.dumps(data).encode())
    row = only(place.check(), backup_id)
    assert row.status == "bad manifest" and "'yesterday' is not ISO 8601" in row.detail


def test_a_manifest_that_lies_about_a_file_is_found_by_reading(place: Place) -> None:
    (backup_id,) = place.make(1)
    data = json.loads(place.read(place.manifest(backup_id)))
    entry = next(entry for entry in data["files"] if entry["path"] == "data.txt")
    entry["checksum"] = "0" * 64
    place.replace(place.manifest(backup_id), json.dumps(data).encode())
    assert only(place.check(), backup_id).status == "ok"
    row = only(place.check(read_data=True), backup_id)
    assert row.status == "damaged"
    assert row.detail.startswith("mismatch: data.txt: checksum ")


# --- backups made without a manifest -------------------------------------------------------


def test_a_backup_without_a_manifest_is_not_an_error(place: Place) -> None:
    (backup_id,) = place.make(1, include_manifest=False)
    report = place.check()
    assert statuses(report) == {backup_id: "no manifest"} and report.ok
    assert report.summary().endswith("1 backup checked: 0 OK, 1 without manifest; data not read")
    report = place.check(read_data=True)
    row = only(report, backup_id)
    assert (row.status, row.data_checked, row.ok) == ("ok, no checksums", True, True)
    assert report.summary().endswith("1 backup checked: 0 OK, 1 without manifest; data read for 1 of 1")


@pytest.mark.parametrize("compression", ["gz", "zst", "xz"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_backup_without_a_manifest_is_found_by_reading(place: Place, damage: str, compression: str) -> None:
    place.add_big_file()
    (backup_id,) = place.make(1, include_manifest=False, compression=compression)
    getattr(place, damage)(place.archive(backup_id))
    assert only(place.check(), backup_id).status == "no manifest"  # nothing recorded its size
    row = only(place.check(read_data=True), backup_id)
    assert (row.status, row.data_checked) == ("damaged", True)
    assert place.storage.describe(place.archive(backup_id)) in row.detail


def test_without_a_manifest_or_compression_only_a_cut_is_found(place: Place) -> None:
    """An uncompressed tar checks its headers only: a changed data byte needs the
    manifest's checksums to be seen, which is what "ok, no checksums" warns of."""
    place.add_big_file()
    (flipped, cut) = place.make(2, include_manifest=False, compression="")
    place.flip(place.archive(flipped))
    place.truncate(place.archive(cut), by=50_000)
    report = place.check(read_data=True)
    assert statuses(report) == {flipped: "ok, no checksums", cut: "damaged"}
    assert "truncated" in only(report, cut).detail


@pytest.mark.parametrize("compression", ["gz", "xz"])
def test_a_small_damaged_backup_without_a_manifest_is_still_reported(place: Place, compression: str) -> None:
    """Listing proves such an archive ours by its mark, read from what its first bytes
    decode to: damage after the mark must not make it vanish from the check. (A bzip2
    or zstd block decodes only whole: damage within the first one, in a small
    archive, still hides the mark.)"""
    (backup_id,) = place.make(1, include_manifest=False, compression=compression)
    place.truncate(place.archive(backup_id), by=30)
    assert only(place.check(read_data=True), backup_id).status == "damaged"


# --- what is not ours, and what others are doing --------------------------------------------


def test_other_programs_files_are_not_backups(place: Place) -> None:
    (backup_id,) = place.make(1)
    before_ids = {row.backup_id for row in place.check().rows}
    put_object(place.storage, "db_20240101_000000.tar.gz", b"\x1f\x8b not ours")
    put_object(place.storage, "notes.manifest.json", b'{"hello": "world"}')
    put_object(place.storage, "daily_20240101_000000.manifest.json", json.dumps({"backup_id": "x"}).encode())
    put_object(place.storage, "daily_20240102_000000.tar.gz", b"garbage")
    put_object(place.storage, "daily_20240103_000000.tgz", b"garbage")
    put_object(place.storage, "README", b"hello")
    for read_data in (False, True):
        report = place.check(read_data=read_data)
        assert {row.backup_id for row in report.rows} == before_ids == {backup_id}
        assert report.ok


def test_a_backup_being_written_is_not_damage(place: Place) -> None:
    (done,) = place.make(1)
    writing = "daily_20990101_000000"
    upload = place.storage.begin(writing + ".tar.gz", claim=writing)
    try:
        upload.write(b"half an archive")
        # The manifest is committed before the archive: this is the moment between.
        manifest = json.loads(place.read(place.manifest(done)))
        manifest["backup_id"] = writing
        manifest["archive"]["name"] = writing + ".tar.gz"
        put_object(place.storage, place.manifest(writing), json.dumps(manifest).encode())
        report = place.check(read_data=True)
        assert statuses(report) == {done: "ok", writing: "being written"}
        assert report.ok and not only(report, writing).data_checked
        assert "1 being written" in report.summary()
    finally:
        upload.abort()
    # The writer gave up without its archive: what is left is a manifest without one.
    assert only(place.check(), writing).status == "missing archive"


def test_a_manifest_whose_archive_lands_during_the_check_is_not_damage(place: Place) -> None:
    (backup_id,) = place.make(1)
    archive = place.archive(backup_id)
    data = place.read(archive)
    place.storage.delete(archive)
    landing = FaultyStorage(place.storage)
    real_claimed = landing.claimed

    def claimed(key: str) -> bool:
        put_object(place.storage, archive, data)  # the writer commits, then lets go of its claim
        landing.claimed = real_claimed  # type: ignore[method-assign]
        return False

    landing.claimed = claimed  # type: ignore[method-assign]
    row = only(check_backups(landing), backup_id)
    assert row.status == "being written" and row.ok


def test_an_archive_removed_after_the_listing_is_not_damage(place: Place) -> None:
    (backup_id,) = place.make(1)
    archive = place.archive(backup_id)
    pruning = FaultyStorage(place.storage, Fault("stat", 2, names=archive))
    row = only(check_backups(pruning), backup_id)
    assert (row.status, row.ok) == ("removed while checking", True)


def test_an_archive_removed_while_its_data_is_read_is_not_damage(place: Place) -> None:
    (backup_id,) = place.make(1)
    archive = place.archive(backup_id)
    pruning = FaultyStorage(
        place.storage, Fault("open_read", 2, names=archive), Fault("stat", 2, nth=2, names=archive, repeat=True)
    )
    row = only(check_backups(pruning, read_data=True), backup_id)
    assert (row.status, row.ok) == ("removed while checking", True)


def test_a_manifest_removed_after_the_listing_is_not_damage(place: Place) -> None:
    (backup_id,) = place.make(1)
    place.storage.delete(place.archive(backup_id))  # a prune removes the archive first ...
    manifest = place.manifest(backup_id)
    pruning = FaultyStorage(place.storage, Fault("stat", 2, names=manifest))  # ... then the manifest
    row = only(check_backups(pruning), backup_id)
    assert (row.status, row.ok) == ("removed while checking", True)


# --- the location ---------------------------------------------------------------------------


def test_an_empty_location_has_nothing_wrong(place: Place) -> None:
    report = place.check(read_data=True)
    assert report.rows == () and report.ok
    assert report.summary() == f"{place.storage.location}: no backups to check"
    assert report.lines() == ["BACKUP ID  STATUS  DATA  SIZE  DETAIL"]


def test_a_missing_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(StorageError, match="no-such-dir: backup directory not found") as caught:
        check_backups(missing)
    assert caught.value.path == str(missing)
    assert not missing.exists()


def test_a_file_named_as_the_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="backup directory not found"):
        check_backups(tmp_path / "file")


def test_a_missing_storage_is_an_error_naming_it() -> None:
    with pytest.raises(StorageError, match="memory://gone: backup directory not found"):
        check_backups(MemoryStorage("memory://gone", exists=False))


def test_a_location_that_cannot_be_listed_is_an_error(place: Place) -> None:
    place.make(1)
    with pytest.raises(StorageError, match="cannot list"):
        check_backups(FaultyStorage(place.storage, Fault("list_objects", 5)))


# --- subsets ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("1/7", (1, 7)), ("7/7", (7, 7)), ("1/1", (1, 1)), (" 3/10 ", (3, 10))])
def test_parse_subset(text: str, expected: tuple[int, int]) -> None:
    assert parse_subset(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/7", "n must be from 1 to 7"),
        ("8/7", "n must be from 1 to 7"),
        ("1/0", "m, the number of parts, must be at least 1"),
        ("0/0", "m, the number of parts, must be at least 1"),
        ("a/b", "expected n/m"),
        ("", "expected n/m"),
        ("1/7/2", "expected n/m"),
        ("-1/7", "expected n/m"),
        ("1.5/7", "expected n/m"),
        ("1 / 7", "expected n/m"),
        ("\u0661/\u0667", "expected n/m"),  # digits, but not ASCII ones
        ("1/7\n2/7", "expected n/m"),
    ],
)
def test_a_bad_subset_is_a_one_line_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_subset(text)
    assert "\n" not in str(caught.value).replace(repr(text), "")


@pytest.mark.parametrize("subset", [(0, 7), (8, 7), (1, 0), (-1, 3)])
def test_check_refuses_a_bad_subset_before_reading_anything(subset: tuple[int, int]) -> None:
    storage = FaultyStorage(MemoryStorage())
    with pytest.raises(ConfigError):
        check_backups(storage, subset=subset)
    assert storage.calls == []


def test_the_parts_of_a_backup_are_fixed() -> None:
    """Rotations in progress rely on them: changing the rule would skip backups for a cycle."""
    assert [subset_part(f"daily_2026050{day}_030000", 7) for day in (1, 2, 3)] == [1, 6, 3]
    assert subset_part("backup_20240101_000000-2", 7) == 6
    assert subset_part("anything", 1) == 1


_IDS = st.sets(st.text(min_size=1, max_size=40), max_size=60)


@given(ids=_IDS, parts=st.integers(min_value=1, max_value=40))
def test_the_parts_cover_every_backup_exactly_once(ids: set[str], parts: int) -> None:
    chosen = [{i for i in ids if subset_part(i, parts) == part} for part in range(1, parts + 1)]
    assert set().union(*chosen) == ids
    assert sum(map(len, chosen)) == len(ids)


@given(ids=_IDS, more=_IDS, parts=st.integers(min_value=1, max_value=40))
def test_a_backups_part_does_not_change_as_others_come_and_go(ids: set[str], more: set[str], parts: int) -> None:
    before = {i: subset_part(i, parts) for i in ids}
    after = {i: subset_part(i, parts) for i in ids | more}
    assert {i: after[i] for i in ids} == before


def test_the_parts_are_about_equal_for_a_daily_schedule() -> None:
    ids = [f"daily_{(START + timedelta(days=n)):%Y%m%d_%H%M%S}" for n in range(7000)]
    counts = [sum(subset_part(i, 7) == part for i in ids) for part in range(1, 8)]
    assert all(850 <= count <= 1150 for count in counts), counts


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_a_rotation_of_subsets_reads_every_backup_once(place: Place, parts: int) -> None:
    ids = place.make(9)
    read: list[str] = []
    for part in range(1, parts + 1):
        report = place.check(subset=(part, parts))
        assert report.read_data and report.subset == (part, parts)
        assert [row.backup_id for row in report.rows] == ids
        read += [row.backup_id for row in report.rows if row.data_checked]
    assert sorted(read) == ids


def test_a_subset_reads_only_its_part(place: Place) -> None:
    ids = place.make(6)
    report = place.check(subset=(2, 3))
    assert {row.backup_id for row in report.rows if row.data_checked} == {i for i in ids if subset_part(i, 3) == 2}
    assert report.summary().endswith(
        f"6 backups checked: 6 OK; data read for {sum(subset_part(i, 3) == 2 for i in ids)} of 6 (subset 2/3)"
    )


# --- the report -------------------------------------------------------------------------------


def test_the_report_as_a_table_and_as_data(place: Place) -> None:
    (good, cut) = place.make(2)
    place.truncate(place.archive(cut))
    report = place.check(subset=(1, 1))
    header, *body = report.lines()
    assert header.split() == ["BACKUP", "ID", "STATUS", "DATA", "SIZE", "DETAIL"]
    assert body[0].split()[:3] == [good, "ok", "read"]
    assert body[1].split()[:3] == [cut, "damaged", "-"]
    assert body[1].endswith(only(report, cut).detail)
    assert header.index("STATUS") == body[0].index(" ok ") + 1
    assert header.index("DETAIL") == body[1].index(only(report, cut).detail)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["read_data"] is True and data["subset"] == "1/1"
    assert data["checked_at"] == CHECKED_AT.isoformat() and data["summary"] == report.summary()
    assert [(row["backup_id"], row["status"], row["ok"]) for row in data["backups"]] == [
        (good, "ok", True),
        (cut, "damaged", False),
    ]


def test_damaged_statuses() -> None:
    assert {"damaged", "missing archive", "bad manifest"} == DAMAGED_STATUSES
    assert CheckRow("x", "being written").ok and not CheckRow("x", "missing archive").ok


def test_the_summary_counts_each_kind() -> None:
    kinds: list[CheckStatus] = [
        "ok",
        "ok",
        "ok, no checksums",
        "no manifest",
        "damaged",
        "bad manifest",
        "being written",
    ]
    rows = tuple(CheckRow(f"daily_2026050{n}_030000", status, data_checked=n < 3) for n, status in enumerate(kinds, 1))
    report = CheckReport("/b", rows, CHECKED_AT, read_data=True, subset=(1, 7))
    assert report.summary() == (
        "/b: 7 backups checked: 2 OK, 2 without manifest, 2 damaged, 1 being written; data read for 2 of 7 (subset 1/7)"
    )
