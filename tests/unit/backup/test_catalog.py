"""Tests for backup.catalog, the pure records of a backup location: backup ids, the
names of a backup's parts, what proves an archive or a manifest ours, ``BackupInfo`` and
the oldest-first order. Nothing here touches a file: listing a location and cleaning
its leftovers are ``backup.listing``'s (``test_listing.py``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from backup.catalog import (
    BackupInfo,
    commit_order,
    encrypted_archive_name,
    format_backup_id,
    oldest_first_key,
    own_archive_name,
    own_manifest,
    own_sidecar,
    parse_backup_id,
)
from backup.manifest import ArchiveInfo, BackupManifest, ManifestEntry, manifest_name_for
from backup.manifest.sidecar import Sidecar, StoredObject
from backup.storage import LocalStorage, ObjectRef
from support.storage import MemoryStorage


def test_format_backup_id_utc() -> None:
    """An aware UTC moment gives <prefix>_<YYYYmmdd>_<HHMMSS>."""
    assert format_backup_id("backup", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "backup_20240102_030405"


def test_format_backup_id_sequence() -> None:
    """Sequence 1 adds nothing; 2 and up add "-N"."""
    moment = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert format_backup_id("db", moment, 1) == "db_20240102_030405"
    assert format_backup_id("db", moment, 2) == "db_20240102_030405-2"
    assert format_backup_id("db", moment, 13) == "db_20240102_030405-13"


def test_format_backup_id_converts_aware_non_utc_to_utc() -> None:
    """A Seoul (UTC+9) morning is the previous UTC evening, across a year boundary."""
    seoul = datetime(2024, 1, 1, 8, 30, 15, tzinfo=ZoneInfo("Asia/Seoul"))
    assert format_backup_id("backup", seoul) == "backup_20231231_233015"
    fixed = datetime(2024, 6, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert format_backup_id("backup", fixed) == "backup_20240601_170000"


@pytest.mark.parametrize("sequence", [1, 2, 7])
@pytest.mark.parametrize("prefix", ["backup", "my_app", "db-1.x", "a_20200101_000000"])
def test_parse_round_trip(prefix: str, sequence: int) -> None:
    """parse_backup_id inverts format_backup_id, even for prefixes with underscores or id-like parts."""
    moment = datetime(2024, 2, 29, 23, 59, 58, tzinfo=UTC)
    assert parse_backup_id(format_backup_id(prefix, moment, sequence)) == (prefix, moment, sequence)


def test_parse_returns_utc_aware_time() -> None:
    """The parsed moment is aware, in UTC, and equals the original instant."""
    seoul = datetime(2024, 1, 1, 8, 30, 15, tzinfo=ZoneInfo("Asia/Seoul"))
    parsed = parse_backup_id(format_backup_id("b", seoul, 2))
    assert parsed == ("b", datetime(2023, 12, 31, 23, 30, 15, tzinfo=UTC), 2)
    assert parsed is not None and parsed[1].tzinfo is UTC
    assert parsed[1] == seoul


@pytest.mark.parametrize(
    "name",
    [
        "",
        "backup",
        "backup_20240102",
        "backup_2024_0102_030405",
        "_20240102_030405",
        "backup_20241302_030405",  # month 13
        "backup_20240230_030405",  # 30 February
        "backup_20240102_250000",  # hour 25
        "backup_20240102_030405-",
        "backup_20240102_030405-x",
        "backup_20240102_030405.tar.gz",
        "backup_20240102_030405\n",
        "backup_20240102_0304051",
    ],
)
def test_parse_non_ids_is_none(name: str) -> None:
    """Anything that is not exactly an id parses to None."""
    assert parse_backup_id(name) is None


# --- the names of a backup's parts ----------------------------------------------------------
# (manifest_name_for is backup.manifest's; it is tested here with the other naming rules.)


@pytest.mark.parametrize(
    "suffix", [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tar.zstd"]
)
def test_manifest_name_for_every_suffix(suffix: str) -> None:
    """The manifest is named after the archive's stem."""
    assert manifest_name_for(f"backup_20240102_030405{suffix}") == "backup_20240102_030405.manifest.json"


def test_manifest_name_for_non_archive() -> None:
    """A name that is not an archive keeps its whole name as the stem."""
    assert manifest_name_for("dump.bin") == "dump.bin.manifest.json"
    assert manifest_name_for("x.tar.gz") == "x.manifest.json"


@pytest.mark.parametrize(
    ("suffix", "compression"),
    [(".tar", ""), (".tar.gz", "gz"), (".tar.bz2", "bz2"), (".tar.xz", "xz"), (".tar.zst", "zst")],
)
def test_own_archive_name_for_our_spellings(suffix: str, compression: str) -> None:
    assert own_archive_name(f"db_20240101_000000-2{suffix}") == ("db_20240101_000000-2", compression)
    assert own_archive_name(f"photos{suffix}") == ("photos", compression)


@pytest.mark.parametrize(
    "name",
    [
        "db_20240101_000000.tgz",
        "db_20240101_000000.tbz2",
        "db_20240101_000000.txz",
        "db_20240101_000000.tar.zstd",
        "db_20240101_000000.zip",
        "db_20240101_000000.gz",
        "db_20240101_000000",
        "db_20240101_000000.manifest.json",
        ".tar.gz",
        "",
    ],
)
def test_own_archive_name_refuses_other_spellings(name: str) -> None:
    """Other tools' spellings of a compressed tar are never ours, whatever the stem."""
    assert own_archive_name(name) is None


# --- what proves a manifest ours ------------------------------------------------------------


def make_manifest(
    backup_id: str, created_at: str = "2024-01-01T00:00:00+00:00", archive: str | None = ".tar.gz"
) -> BackupManifest:
    """Our manifest of ``backup_id``, naming the archive ``<backup_id><archive>`` (a
    suffix) or, with a full name, that archive; None names no archive at all."""
    files = [ManifestEntry("d", 0, "", created_at, "dir"), ManifestEntry("d/f", 3, "00" * 32, created_at)]
    info = None
    if archive is not None:
        name = backup_id + archive if archive.startswith(".") else archive
        info = ArchiveInfo(name, 7, "00" * 32, "gz")
    return BackupManifest(backup_id=backup_id, created_at=created_at, source_dir="/src", files=files, archive=info)


def test_own_manifest_accepts_ours() -> None:
    raw = make_manifest("backup_20240101_000000").to_json().encode()
    manifest, why_not = own_manifest(raw, "backup_20240101_000000")
    assert why_not is None
    assert manifest is not None and manifest.backup_id == "backup_20240101_000000"
    assert manifest.archive is not None and manifest.archive.name == "backup_20240101_000000.tar.gz"


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("not-json", "not valid JSON"),
        ("not-utf8", "not valid JSON"),
        ("a-list", '"format"'),
        ("other-tools-json", '"format"'),
        ("no-format-tag", '"format"'),
        ("wrong-format-tag", '"format"'),
        ("another-backup-id", "it is the manifest of 'backup_20240101_000001'"),
        ("names-another-archive", "it names the archive 'backup_20240101_000000.tar.zst.bak'"),
        ("names-an-archive-elsewhere", "it names the archive '../elsewhere/backup_20240101_000000.tar.gz'"),
        ("names-a-tgz", "it names the archive 'backup_20240101_000000.tgz'"),
        ("names-another-ids-archive", "it names the archive 'backup_20240101_000001.tar.gz'"),
        ("no-archive", "it names no archive"),
    ],
)
def test_own_manifest_refuses_anything_less(variant: str, reason: str) -> None:
    """A manifest is ours only with our format tag, its own id, and naming an archive of
    that id in one of our spellings; the reason says which failed."""
    backup_id = "backup_20240101_000000"
    ours = make_manifest(backup_id).to_dict()
    archive = ours["archive"]
    data: object
    if variant == "not-json":
        raw = b"{oops"
    elif variant == "not-utf8":
        raw = b'{"format": "\xff\xfe"}'  # not UTF-8
    else:
        if variant == "a-list":
            data = [ours]
        elif variant == "other-tools-json":
            data = {"id": backup_id, "tables": ["users"]}
        elif variant == "no-format-tag":
            data = {key: value for key, value in ours.items() if key != "format"}
        elif variant == "wrong-format-tag":
            data = {**ours, "format": "another-backup-tool"}
        elif variant == "another-backup-id":
            data = {**ours, "backup_id": "backup_20240101_000001"}
        elif variant == "names-another-archive":
            data = {**ours, "archive": {**archive, "name": f"{backup_id}.tar.zst.bak"}}
        elif variant == "names-an-archive-elsewhere":
            data = {**ours, "archive": {**archive, "name": f"../elsewhere/{backup_id}.tar.gz"}}
        elif variant == "names-a-tgz":
            data = {**ours, "archive": {**archive, "name": f"{backup_id}.tgz"}}
        elif variant == "names-another-ids-archive":
            data = {**ours, "archive": {**archive, "name": "backup_20240101_000001.tar.gz"}}
        else:
            data = {**ours, "archive": None}
        raw = json.dumps(data).encode()
    manifest, why_not = own_manifest(raw, backup_id)
    assert manifest is None
    assert why_not is not None and reason in why_not


def test_own_manifest_of_a_manifest_that_does_not_parse() -> None:
    """Our format tag on something our model refuses is still not ours; the model's reason is given."""
    data = {**make_manifest("b_20240101_000000").to_dict(), "files": "not a list"}
    manifest, why_not = own_manifest(json.dumps(data).encode(), "b_20240101_000000")
    assert manifest is None and why_not


# --- BackupInfo ----------------------------------------------------------------------------


def backup_info(
    storage: LocalStorage | MemoryStorage, backup_id: str, created_at: datetime | None, *, manifest: bool = True
) -> BackupInfo:
    """A BackupInfo of ``backup_id`` (a .tar.gz and, if asked, its manifest) in ``storage``."""
    archive = backup_id + ".tar.gz"
    manifest_name = backup_id + ".manifest.json"
    return BackupInfo(
        backup_id=backup_id,
        prefix=parsed[0] if (parsed := parse_backup_id(backup_id)) else None,
        archive=ObjectRef(storage, archive, storage.describe(archive)),
        manifest=ObjectRef(storage, manifest_name, storage.describe(manifest_name)) if manifest else None,
        created_at=created_at,
        size_bytes=1234,
        file_count=3 if manifest else None,
        compression="gz",
    )


def test_backup_info_paths_in_a_directory(tmp_path: Path) -> None:
    info = backup_info(LocalStorage(tmp_path), "b_20240101_000000", datetime(2024, 1, 1, tzinfo=UTC))
    assert info.archive_path == tmp_path / "b_20240101_000000.tar.gz"
    assert info.manifest_path == tmp_path / "b_20240101_000000.manifest.json"
    without = backup_info(LocalStorage(tmp_path), "b_20240101_000000", None, manifest=False)
    assert without.manifest_path is None


def test_backup_info_has_no_paths_elsewhere() -> None:
    """In a storage without local files there are no paths; the objects' labels name them."""
    info = backup_info(MemoryStorage("memory://b"), "b_20240101_000000", None)
    assert info.archive.path is None and info.archive_path is None
    assert info.manifest_path is None
    assert info.archive.label == "memory://b/b_20240101_000000.tar.gz"
    assert info.manifest is not None and info.manifest.label == "memory://b/b_20240101_000000.manifest.json"


def test_backup_info_to_dict(tmp_path: Path) -> None:
    """to_dict gives JSON-ready values; paths are the objects' labels."""
    info = backup_info(LocalStorage(tmp_path), "b_20240101_000000", datetime(2024, 1, 1, 9, tzinfo=UTC))
    assert info.to_dict() == {
        "backup_id": "b_20240101_000000",
        "prefix": "b",
        "archive_path": str(tmp_path / "b_20240101_000000.tar.gz"),
        "manifest_path": str(tmp_path / "b_20240101_000000.manifest.json"),
        "created_at": "2024-01-01T09:00:00+00:00",
        "size_bytes": 1234,
        "file_count": 3,
        "compression": "gz",
        "encrypted_to": [],
        "sidecar_path": None,
        "problem": None,
    }
    remote = backup_info(MemoryStorage("memory://b"), "b_20240101_000000", None, manifest=False).to_dict()
    assert (remote["archive_path"], remote["manifest_path"]) == ("memory://b/b_20240101_000000.tar.gz", None)
    assert remote["created_at"] is None and remote["file_count"] is None
    assert json.loads(json.dumps(remote)) == remote


# --- oldest first ----------------------------------------------------------------------------


def moment_of(backup_id: str) -> datetime:
    parsed = parse_backup_id(backup_id)
    assert parsed is not None
    return parsed[1]


def test_oldest_first_orders_same_second_claims_by_sequence() -> None:
    """As text "-10" sorts before "-2"; the claims sort in the order they were made."""
    storage = MemoryStorage()
    second = datetime(2024, 1, 1, tzinfo=UTC)
    ids = ["db_20240101_000000-10", "db_20240101_000000-2", "db_20240101_000000", "db_20231231_235959"]
    infos = [backup_info(storage, i, stamp) for i in ids if (stamp := moment_of(i))]
    assert [b.backup_id for b in sorted(infos, key=oldest_first_key)] == [
        "db_20231231_235959",
        "db_20240101_000000",
        "db_20240101_000000-2",
        "db_20240101_000000-10",
    ]
    assert oldest_first_key(infos[2]) == (second, "db_20240101_000000", 1)


def test_oldest_first_puts_unknown_times_first_and_compares_instants() -> None:
    """A backup of unknown time sorts before every dated one; times compare as instants
    (8:00 in Seoul is an hour before midnight UTC), whatever their ids say."""
    storage = MemoryStorage()
    seoul = backup_info(storage, "a_20240101_000000", datetime(2024, 1, 1, 8, 0, tzinfo=ZoneInfo("Asia/Seoul")))
    utc = backup_info(storage, "b_20240101_000000", datetime(2024, 1, 1, 0, 0, tzinfo=UTC))
    unknown = backup_info(storage, "photos", None)
    assert [b.backup_id for b in sorted([utc, seoul, unknown], key=oldest_first_key)] == [
        "photos",
        "a_20240101_000000",
        "b_20240101_000000",
    ]


# --- encrypted backups: names, sidecars, commit order -------------------------------------


def _sidecar(backup_id: str = "b_20240101_000000", **changes: object) -> Sidecar:
    values: dict[str, object] = {
        "backup_id": backup_id,
        "created_at": "2024-01-01T00:00:00+00:00",
        "kind": "manual",
        "source_size": 10,
        "checksum_algorithm": "sha256",
        "archive": ArchiveInfo(f"{backup_id}.tar.zst.age", 300, "ab" * 32, "zst"),
        "manifest": StoredObject(f"{backup_id}.manifest.json.age", 200, "cd" * 32),
        "recipients": ("age1example",),
    }
    values.update(changes)
    return Sidecar(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("b_20240101_000000.tar.zst.age", ("b_20240101_000000", "zst")),
        ("b_20240101_000000.tar.age", ("b_20240101_000000", "")),
        ("b_20240101_000000.tar.zst", None),  # not encrypted
        ("b_20240101_000000.tgz.age", None),  # not our spelling
        ("b_20240101_000000.manifest.json.age", None),
        (".tar.gz.age", None),
    ],
)
def test_encrypted_archive_names(name: str, expected: tuple[str, str] | None) -> None:
    assert encrypted_archive_name(name) == expected
    if name.endswith(".age"):
        assert own_archive_name(name) is None  # an encrypted archive is never taken for a plain one


def test_a_sidecar_round_trips_through_json() -> None:
    sidecar = _sidecar()
    assert Sidecar.from_json(sidecar.to_json().encode()) == sidecar
    assert own_sidecar(sidecar.to_json().encode(), "b_20240101_000000") == (sidecar, None)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xff", "not valid JSON"),
        (b"[]", 'no "format"'),
        (b'{"format": "obs-backup-manifest"}', 'no "format"'),
        (b'{"format": "obs-backup-sidecar", "version": 9}', "unsupported sidecar version 9"),
        (b'{"format": "obs-backup-sidecar", "version": 1}', "malformed"),
    ],
)
def test_what_is_not_a_sidecar_says_why(raw: bytes, why: str) -> None:
    sidecar, reason = own_sidecar(raw, "b_20240101_000000")
    assert sidecar is None and reason is not None and why in reason


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"backup_id": "b_20240102_000000"}, "it is the sidecar of 'b_20240102_000000'"),
        ({"archive": ArchiveInfo("other_20240101_000000.tar.zst.age", 1, "00", "zst")}, "it names the archive"),
        ({"archive": ArchiveInfo("b_20240101_000000.tar.zst", 1, "00", "zst")}, "it names the archive"),
        ({"manifest": StoredObject("b_20240101_000000.manifest.json", 1, "00")}, "it names the manifest"),
        ({"recipients": ()}, "names no age-encryption.org/v1 recipients"),
        ({"source_size": -1}, "malformed"),
        ({"kind": 7}, "malformed"),
    ],
)
def test_a_sidecar_is_ours_only_when_it_names_its_own_objects(changes: dict[str, object], why: str) -> None:
    raw = _sidecar(**{"backup_id": "b_20240101_000000", **changes}).to_json().encode()  # type: ignore[arg-type]
    sidecar, reason = own_sidecar(raw, "b_20240101_000000")
    assert sidecar is None and reason is not None and why in reason


def test_commit_order_puts_the_commit_point_last() -> None:
    """In a directory the archive, linked last, completes a backup, and the sidecar
    (which proves the others ours) comes first; in an object store the other way round."""
    archive, sidecar, manifest = "a.tar.zst.age", "a.sidecar.json", "a.manifest.json.age"
    assert commit_order(False, archive, [sidecar, manifest]) == [sidecar, manifest, archive]
    assert commit_order(True, archive, [sidecar, manifest]) == [archive, manifest, sidecar]
    assert commit_order(False, "a.tar", ["a.manifest.json"]) == ["a.manifest.json", "a.tar"]
    assert commit_order(True, "a.tar", ["a.manifest.json"]) == ["a.tar", "a.manifest.json"]
    assert commit_order(True, "a.tar", []) == ["a.tar"]


def test_ids_that_are_not_ours_sort_as_text_within_their_second(tmp_path: Path) -> None:
    """Only an id of ours has a claim sequence: "x-10" and "x-2" named by a foreign
    tool are plain names, ordered as text (not as claims 10 and 2)."""
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    storage = LocalStorage(tmp_path)
    two, ten = backup_info(storage, "x-2", moment), backup_info(storage, "x-10", moment)
    assert sorted([two, ten], key=oldest_first_key) == [ten, two]
    ours = [backup_info(storage, f"b_20240101_000000-{n}", moment) for n in (10, 2)]
    assert [b.backup_id for b in sorted(ours, key=oldest_first_key)] == ["b_20240101_000000-2", "b_20240101_000000-10"]


def test_an_id_spelled_with_claim_one_sorts_after_the_plain_id_whatever_the_input_order() -> None:
    """We never write "-1" (the first claim has no suffix), but another tool or a person
    may: "x-1" is then a name of its own, after "x" in the same second, not a tie that
    the input order would settle."""
    storage = MemoryStorage()
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    plain = backup_info(storage, "db_20240101_000000", moment)
    spelled = backup_info(storage, "db_20240101_000000-1", moment)
    for given in ([plain, spelled], [spelled, plain]):
        assert [b.backup_id for b in sorted(given, key=oldest_first_key)] == [
            "db_20240101_000000",
            "db_20240101_000000-1",
        ]
