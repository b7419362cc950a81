"""Tests for backup.catalog: backup ids, listing complete backups, cleaning leftovers."""

from __future__ import annotations

import fcntl
import gzip
import io
import json
import os
import tarfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import zstandard

from backup.catalog import (
    BackupInfo,
    clean_leftovers,
    format_backup_id,
    list_backups,
    manifest_path_for,
    parse_backup_id,
)
from backup.manifest import ArchiveInfo, BackupManifest, ManifestEntry
from backup.storage import LocalStorage
from backup.tarformat import writer_comment

UTC = UTC


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


@pytest.mark.parametrize(
    "suffix", [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tar.zstd"]
)
def test_manifest_path_for_every_suffix(tmp_path: Path, suffix: str) -> None:
    """The manifest sits beside the archive, named after the archive's stem."""
    archive = tmp_path / f"backup_20240102_030405{suffix}"
    assert manifest_path_for(archive) == tmp_path / "backup_20240102_030405.manifest.json"


def test_manifest_path_for_non_archive(tmp_path: Path) -> None:
    """A name that is not an archive keeps its whole name as the stem."""
    assert manifest_path_for(tmp_path / "dump.bin") == tmp_path / "dump.bin.manifest.json"
    assert manifest_path_for(Path("x.tar.gz")) == Path("x.manifest.json")


# --- list_backups ---------------------------------------------------------------------


def _manifest(
    backup_id: str, created_at: str, sizes: tuple[int, ...] = (1, 2), archive: str | None = ".tar.gz"
) -> BackupManifest:
    """Our manifest of ``backup_id``, naming the archive ``<backup_id><archive>`` (a
    suffix) or, with a full name, that archive; None names no archive at all."""
    files = [ManifestEntry("d", 0, "", created_at, "dir")]
    files += [ManifestEntry(f"d/f{i}", size, "00" * 32, created_at) for i, size in enumerate(sizes)]
    info = None
    if archive is not None:
        name = backup_id + archive if archive.startswith(".") else archive
        info = ArchiveInfo(name, 7, "00" * 32, "gz")
    return BackupManifest(backup_id=backup_id, created_at=created_at, source_dir="/src", files=files, archive=info)


def _tar(comment: str | None, suffix: str = ".tar.gz") -> bytes:
    """A small archive; with ``comment``, one that starts as ours does (a pax global
    header whose comment marks it); compressed as ``suffix`` says."""
    raw = io.BytesIO()
    marks = {"comment": comment} if comment is not None else None
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT, pax_headers=marks) as tar:
        info = tarfile.TarInfo("data.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"data\n"))
    data = raw.getvalue()
    if suffix in (".tar.gz", ".tgz"):
        return gzip.compress(data, mtime=0)
    if suffix == ".tar.zst":
        return zstandard.ZstdCompressor().compress(data)
    assert suffix == ".tar", suffix
    return data


def _marked(backup_id: str, suffix: str = ".tar.gz") -> bytes:
    """An archive carrying our mark for ``backup_id``, as one made with --no-manifest does."""
    return _tar(writer_comment(backup_id), suffix)


def _add(
    directory: Path,
    backup_id: str,
    suffix: str = ".tar.gz",
    data: bytes | None = None,
    manifest: BackupManifest | None = None,
) -> Path:
    """An archive (by default one marked as ours for ``backup_id``) and, if given, its manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / (backup_id + suffix)
    archive.write_bytes(_marked(backup_id, suffix) if data is None else data)
    if manifest is not None:
        manifest.save(directory / (backup_id + ".manifest.json"))
    return archive


def test_list_backups_reads_manifest(tmp_path: Path) -> None:
    """A complete backup is described from its manifest: aware time, counts, size, compression."""
    archive = _add(
        tmp_path,
        "backup_20240501_030000",
        data=b"x" * 1234,
        manifest=_manifest("backup_20240501_030000", "2024-05-01T12:00:00+09:00", sizes=(5, 6, 7)),
    )
    assert list_backups(tmp_path) == [
        BackupInfo(
            backup_id="backup_20240501_030000",
            prefix="backup",
            archive_path=archive,
            manifest_path=tmp_path / "backup_20240501_030000.manifest.json",
            created_at=datetime(2024, 5, 1, 3, 0, tzinfo=UTC),
            size_bytes=1234,
            file_count=3,
            compression="gz",
        )
    ]
    info = list_backups(tmp_path)[0]
    assert info.created_at is not None and info.created_at.utcoffset() == timedelta(hours=9)


def test_list_backups_created_at_from_manifest_not_id(tmp_path: Path) -> None:
    """When manifest and id disagree, the manifest's time wins."""
    _add(tmp_path, "backup_20240101_000000", manifest=_manifest("backup_20240101_000000", "2030-01-01T00:00:00+00:00"))
    assert list_backups(tmp_path)[0].created_at == datetime(2030, 1, 1, tzinfo=UTC)


def test_list_backups_seed_naive_time_made_aware(tmp_path: Path) -> None:
    """A seed-era naive created_at is read as local time and made aware."""
    _add(tmp_path, "backup_20240101_000000", manifest=_manifest("backup_20240101_000000", "2024-01-01T09:00:00"))
    created = list_backups(tmp_path)[0].created_at
    assert created == datetime(2024, 1, 1, 9, 0).astimezone()
    assert created is not None and created.tzinfo is not None


def test_list_backups_only_complete_backups(tmp_path: Path) -> None:
    """Manifests without archives, partials and other files are not backups."""
    _add(tmp_path, "backup_20240101_000000", manifest=_manifest("backup_20240101_000000", "2024-01-01T00:00:00+00:00"))
    _manifest("backup_20240102_000000", "2024-01-02T00:00:00+00:00").save(
        tmp_path / "backup_20240102_000000.manifest.json"
    )
    (tmp_path / ".backup_20240103_000000.partial").write_bytes(b"half")
    (tmp_path / "notes.txt").write_bytes(b"hi")
    assert [b.backup_id for b in list_backups(tmp_path)] == ["backup_20240101_000000"]


def test_list_backups_archive_without_manifest(tmp_path: Path) -> None:
    """An archive without a manifest is listed, timed by its id, when its mark names that id."""
    data = _marked("backup_20240101_020304-2", ".tar.zst")
    archive = _add(tmp_path, "backup_20240101_020304-2", suffix=".tar.zst", data=data)
    assert list_backups(tmp_path) == [
        BackupInfo(
            backup_id="backup_20240101_020304-2",
            prefix="backup",
            archive_path=archive,
            manifest_path=None,
            created_at=datetime(2024, 1, 1, 2, 3, 4, tzinfo=UTC),
            size_bytes=len(data),
            file_count=None,
            compression="zst",
        )
    ]


def test_list_backups_foreign_archives(tmp_path: Path) -> None:
    """An archive not named like an id counts only if our manifest names it."""
    _add(tmp_path, "random", suffix=".tar.gz", data=_tar(None))
    _add(tmp_path, "photos", suffix=".tgz", manifest=_manifest("photos", "2024-03-01T00:00:00+00:00", archive=".tgz"))
    ours = _add(
        tmp_path, "album", suffix=".tar", manifest=_manifest("album", "2024-03-01T00:00:00+00:00", archive=".tar")
    )
    listed = list_backups(tmp_path)
    assert [(b.backup_id, b.prefix, b.archive_path, b.compression) for b in listed] == [("album", None, ours, "")]
    assert listed[0].created_at == datetime(2024, 3, 1, tzinfo=UTC)


def test_list_backups_skips_id_named_archives_that_are_not_ours(tmp_path: Path) -> None:
    """Names alone prove nothing: another tool's archive named like a backup id, a copy
    of ours under another id, our archive under a name we never use, a symlink to one of
    ours and a directory are not backups (they used to be listed, and so pruned)."""
    ours = _add(tmp_path, "db_20240105_000000")
    _add(tmp_path, "db_20240101_000000", data=_tar(None))  # a dump script's, made by tar
    _add(tmp_path, "db_20240102_000000", data=_marked("db_20240105_000000"))  # a renamed copy of ours
    _add(tmp_path, "db_20240103_000000", suffix=".tgz")  # marked, but .tgz is never our spelling
    (tmp_path / "db_20240104_000000.tar.gz").symlink_to(ours.name)
    (tmp_path / "db_20240106_000000.tar.gz").mkdir()
    _add(tmp_path, "db_20240107_000000", data=b"not even an archive")
    assert [b.backup_id for b in list_backups(tmp_path)] == ["db_20240105_000000"]
    assert [b.backup_id for b in list_backups(tmp_path, prefix="db")] == ["db_20240105_000000"]


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "variant",
    [
        "other-tools-json",
        "no-format-tag",
        "wrong-format-tag",
        "another-backup-id",
        "names-another-archive",
        "no-archive",
    ],
)
def test_list_backups_needs_our_manifest_or_our_mark(tmp_path: Path, variant: str) -> None:
    """An id-named archive without our mark is listed only if its manifest is ours in
    every respect: our format tag, its own id, and naming this very archive."""
    backup_id = "backup_20240101_000000"
    _add(tmp_path, backup_id, data=_tar(None))
    path = tmp_path / f"{backup_id}.manifest.json"
    ours = _manifest(backup_id, "2024-01-01T00:00:00+00:00").to_dict()
    if variant == "other-tools-json":
        _write_json(path, {"id": backup_id, "tables": ["users"], "created": "2024-01-01"})
    elif variant == "no-format-tag":
        _write_json(path, {key: value for key, value in ours.items() if key != "format"})
    elif variant == "wrong-format-tag":
        _write_json(path, {**ours, "format": "another-backup-tool"})
    elif variant == "another-backup-id":
        _write_json(path, {**ours, "backup_id": "backup_20240101_000001"})
    elif variant == "names-another-archive":
        _write_json(path, {**ours, "archive": {**ours["archive"], "name": "backup_20240101_000000.tar.zst"}})
    else:
        _write_json(path, {**ours, "archive": None})
    assert list_backups(tmp_path) == []

    # Our mark in the archive is proof enough; the manifest that is not ours is reported,
    # and not taken as the backup's (so never removed with it).
    _add(tmp_path, backup_id)
    (info,) = list_backups(tmp_path)
    assert info.manifest_path is None and info.file_count is None
    assert info.problem is not None and info.problem.startswith(f"{path}: not this backup's manifest")


def test_list_backups_prefix_filter_and_order(tmp_path: Path) -> None:
    """prefix= keeps that prefix only; results are oldest first."""
    _add(tmp_path, "db_20240103_000000")
    _add(tmp_path, "db_20240101_000000")
    _add(tmp_path, "db_20240101_000000-2")
    _add(tmp_path, "web_20240102_000000")
    _add(tmp_path, "db_x_20240102_000000")
    _add(tmp_path, "photos", data=b"x", manifest=_manifest("photos", "2024-01-01T00:00:00+00:00"))
    assert [b.backup_id for b in list_backups(tmp_path, prefix="db")] == [
        "db_20240101_000000",
        "db_20240101_000000-2",
        "db_20240103_000000",
    ]
    assert [b.backup_id for b in list_backups(tmp_path)] == [
        "db_20240101_000000",
        "db_20240101_000000-2",
        "photos",
        "db_x_20240102_000000",
        "web_20240102_000000",
        "db_20240103_000000",
    ]


def test_list_backups_damaged_manifest_reported(tmp_path: Path) -> None:
    """A manifest that cannot be read is reported as the backup's problem, not raised;
    the archive, marked as ours, is still listed (timed by its id)."""
    _add(tmp_path, "backup_20240101_000000")
    manifest = tmp_path / "backup_20240101_000000.manifest.json"
    manifest.write_text("{oops")
    (info,) = list_backups(tmp_path)
    assert info.problem == f"{manifest}: not this backup's manifest (not valid JSON)"
    assert info.created_at == datetime(2024, 1, 1, tzinfo=UTC)
    assert info.file_count is None and info.manifest_path is None


def test_list_backups_missing_directory(tmp_path: Path) -> None:
    """A backup directory that does not exist holds no backups."""
    assert list_backups(tmp_path / "none") == []


def test_backup_info_to_dict(tmp_path: Path) -> None:
    """to_dict gives JSON-ready values."""
    archive = _add(tmp_path, "backup_20240101_000000")
    assert list_backups(tmp_path)[0].to_dict() == {
        "backup_id": "backup_20240101_000000",
        "prefix": "backup",
        "archive_path": str(archive),
        "manifest_path": None,
        "created_at": "2024-01-01T00:00:00+00:00",
        "size_bytes": archive.stat().st_size,
        "file_count": None,
        "compression": "gz",
        "problem": None,
    }


# --- clean_leftovers ------------------------------------------------------------------


def test_clean_leftovers_removes_dead_partials_and_orphan_manifests(tmp_path: Path) -> None:
    """Unlocked partials and manifests whose archive never landed are removed; backups stay."""
    _add(tmp_path, "b_20240101_000000", manifest=_manifest("b_20240101_000000", "2024-01-01T00:00:00+00:00"))
    _manifest("b_20240102_000000", "2024-01-02T00:00:00+00:00").save(tmp_path / "b_20240102_000000.manifest.json")
    # A killed writer's partial: created without a lock.
    (tmp_path / ".b_20240103_000000.partial").write_bytes(b"half")
    removed = clean_leftovers(tmp_path)
    assert removed == [".b_20240103_000000.partial", "b_20240102_000000.manifest.json"]
    assert sorted(os.listdir(tmp_path)) == ["b_20240101_000000.manifest.json", "b_20240101_000000.tar.gz"]
    assert clean_leftovers(tmp_path) == []


def test_clean_leftovers_manifest_with_dead_partial_removed(tmp_path: Path) -> None:
    """A manifest whose archive partial was left by a dead writer goes with the partial."""
    _manifest("b_20240101_000000", "2024-01-01T00:00:00+00:00").save(tmp_path / "b_20240101_000000.manifest.json")
    (tmp_path / ".b_20240101_000000.partial").write_bytes(b"")
    assert sorted(clean_leftovers(tmp_path)) == [".b_20240101_000000.partial", "b_20240101_000000.manifest.json"]
    assert os.listdir(tmp_path) == []


def test_clean_leftovers_keeps_manifest_of_live_writer(tmp_path: Path) -> None:
    """A manifest committed while its archive is still being written (lock held) is kept."""
    storage = LocalStorage(tmp_path)
    backup_id = "b_20240101_000000"
    archive = storage.begin(backup_id + ".tar.gz", claim=backup_id)  # the live writer
    archive.stream.write(b"archive bytes")
    manifest = storage.begin(backup_id + ".manifest.json")
    manifest.stream.write(_manifest(backup_id, "2024-01-01T00:00:00+00:00").to_json().encode())
    manifest.commit()
    assert clean_leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == [f".{backup_id}.partial", f"{backup_id}.manifest.json"]
    archive.commit()
    assert clean_leftovers(tmp_path) == []
    assert [b.backup_id for b in list_backups(tmp_path)] == [backup_id]


def test_clean_leftovers_keeps_foreign_backup_manifest(tmp_path: Path) -> None:
    """A manifest beside any archive with its stem is not an orphan."""
    _add(tmp_path, "photos", suffix=".tar", manifest=_manifest("photos", "2024-01-01T00:00:00+00:00", archive=".tar"))
    assert clean_leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["photos.manifest.json", "photos.tar"]


def test_clean_leftovers_keeps_manifest_of_live_writer_of_an_unclaimed_archive(tmp_path: Path) -> None:
    """A writer may hold ``.<archive name>.partial`` rather than ``.<id>.partial``: its
    committed manifest is not a leftover either."""
    storage = LocalStorage(tmp_path)
    backup_id = "b_20240101_000000"
    archive = storage.begin(backup_id + ".tar.gz")
    _manifest(backup_id, "2024-01-01T00:00:00+00:00").save(tmp_path / f"{backup_id}.manifest.json")
    assert clean_leftovers(tmp_path) == []
    archive.commit()
    assert [b.backup_id for b in list_backups(tmp_path)] == [backup_id]


@pytest.mark.parametrize(
    "variant",
    [
        "other-tools-json",
        "named-like-ours",
        "no-format-tag",
        "another-backup-id",
        "names-an-archive-elsewhere",
        "names-a-tgz",
        "no-archive",
        "symlink-to-ours",
    ],
)
def test_clean_leftovers_removes_only_manifests_that_are_ours(tmp_path: Path, variant: str) -> None:
    """A manifest without its archive is removed only if it is ours in every respect;
    anyone else's JSON stays byte for byte (it used to be removed by every create)."""
    backup_id = "backup_20240101_000000"
    ours = _manifest(backup_id, "2024-01-01T00:00:00+00:00").to_dict()
    name = f"{backup_id}.manifest.json"
    if variant == "other-tools-json":
        name = "notes.manifest.json"
        data: object = {"notes": ["call the vendor"]}
    elif variant == "named-like-ours":
        data = {"tables": ["users", "orders"], "taken_at": "2024-01-01T00:00:00Z"}
    elif variant == "no-format-tag":
        data = {key: value for key, value in ours.items() if key != "format"}
    elif variant == "another-backup-id":
        data = {**ours, "backup_id": "backup_20231231_000000"}
    elif variant == "names-an-archive-elsewhere":
        data = {**ours, "archive": {**ours["archive"], "name": "../elsewhere/backup_20240101_000000.tar.gz"}}
    elif variant == "names-a-tgz":
        data = {**ours, "archive": {**ours["archive"], "name": "backup_20240101_000000.tgz"}}
    elif variant == "no-archive":
        data = {**ours, "archive": None}
    else:
        data = ours
    if variant == "symlink-to-ours":
        (tmp_path / "elsewhere").mkdir()
        _write_json(tmp_path / "elsewhere" / name, data)
        (tmp_path / name).symlink_to(Path("elsewhere") / name)
    else:
        _write_json(tmp_path / name, data)
    before = {p: os.readlink(p) if p.is_symlink() else p.read_bytes() for p in tmp_path.rglob("*") if not p.is_dir()}

    assert clean_leftovers(tmp_path) == []

    after = {p: os.readlink(p) if p.is_symlink() else p.read_bytes() for p in tmp_path.rglob("*") if not p.is_dir()}
    assert after == before


def test_clean_leftovers_removes_only_partials_of_our_own_making(tmp_path: Path) -> None:
    """Dead writers' partials with names this tool makes go; another program's hidden
    ``.partial`` files (and anything that is not a regular file) stay, locked or not."""
    ours = [
        ".b_20240101_000000.partial",
        ".b_20240101_000000-2.partial",
        ".b_20240101_000000.tar.zst.partial",
        ".b_20240101_000000.tar.partial",
        ".b_20240101_000000.manifest.json.partial",
        ".b_20240101_000000.manifest.json.4242.partial",
        "..obs-backup-state.json.4242.partial",
    ]
    theirs = [
        ".download.partial",
        ".foo.partial",
        ".notes.tar.gz.partial",
        ".b_20240101_000000.tgz.partial",
        ".b_20240101_000000.zip.partial",
        ".settings.json.4242.partial",
        ".b_2024_000000.partial",
    ]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"half of something")
    (tmp_path / ".b_20240102_000000.partial").mkdir()  # a directory under one of our names
    os.mkfifo(tmp_path / ".b_20240103_000000.partial")
    before = {name: (tmp_path / name).read_bytes() for name in theirs}

    assert sorted(clean_leftovers(tmp_path)) == sorted(ours)

    assert {name: (tmp_path / name).read_bytes() for name in theirs} == before
    assert (tmp_path / ".b_20240102_000000.partial").is_dir()
    assert (tmp_path / ".b_20240103_000000.partial").exists()


def test_clean_leftovers_spares_a_live_partial_of_our_own_making(tmp_path: Path) -> None:
    """A name of ours is removed only if its writer is gone: a held lock keeps it."""
    live = tmp_path / ".b_20240101_000000.manifest.json.4242.partial"
    fd = os.open(live, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert clean_leftovers(tmp_path) == []
        assert live.exists()
    finally:
        os.close(fd)
    assert clean_leftovers(tmp_path) == [live.name]


def test_clean_leftovers_missing_directory(tmp_path: Path) -> None:
    """Nothing to clean where there is no directory."""
    assert clean_leftovers(tmp_path / "none") == []


def test_list_backups_orders_same_second_claims_by_sequence(tmp_path: Path) -> None:
    """As text "-10" sorts before "-2"; the claims are listed in the order they were made."""
    for backup_id in ("db_20240101_000000-10", "db_20240101_000000-2", "db_20240101_000000"):
        _add(tmp_path, backup_id)
    assert [b.backup_id for b in list_backups(tmp_path)] == [
        "db_20240101_000000",
        "db_20240101_000000-2",
        "db_20240101_000000-10",
    ]
