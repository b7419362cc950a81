"""Tests for backup.listing: the complete backups a location holds, and the leftovers
of interrupted runs, read (and removed) through the location's storage.

Most tests run twice: against a real directory (given by its path, as a user names
it) and against the in-memory storage, since listing must not depend on files. What
only a directory can hold (symlinks, FIFOs and directories under a backup's name,
another program's hidden files, a partial whose writer still holds its lock) is tested
on a directory only.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import io
import json
import os
import tarfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard

from backup.catalog import BackupInfo
from backup.listing import clean_leftovers, list_backups
from backup.manifest import ArchiveInfo, BackupManifest, ManifestEntry
from backup.storage import LocalStorage, Location
from backup.storage.base import BackupStorage, ObjectInfo
from backup.storage.local import partial_name
from backup.stream.tarformat import writer_comment
from support.storage import Fault, FaultyStorage, MemoryStorage, put_object, read_object


@dataclass
class Where:
    """A backup location under test: its storage (to put things into), and what
    ``list_backups`` and ``clean_leftovers`` are given (a directory's path, or the storage)."""

    storage: BackupStorage
    location: Location

    def label(self, name: str) -> str:
        return self.storage.describe(name)

    def names(self) -> list[str]:
        return [info.name for info in self.storage.list_objects()]

    def contents(self) -> dict[str, bytes]:
        return {name: read_object(self.storage, name) for name in self.names()}

    def assert_holds(self, expected: list[str], *, hidden: tuple[str, ...] = ()) -> None:
        """The objects are ``expected``; a directory holds nothing else either (no
        partial, no leftover) but the ``hidden`` files named."""
        assert self.names() == sorted(expected)
        if isinstance(self.storage, LocalStorage):
            assert sorted(os.listdir(self.storage.directory)) == sorted([*expected, *hidden])


@pytest.fixture(params=["local", "memory"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Where:
    if request.param == "local":
        storage = LocalStorage(tmp_path / "backups")
        storage.ensure()
        return Where(storage, storage.directory)
    memory = MemoryStorage("memory://backups")
    return Where(memory, memory)


@pytest.fixture
def directory(tmp_path: Path) -> Where:
    """A real backup directory, for what only a directory can hold."""
    storage = LocalStorage(tmp_path / "backups")
    storage.ensure()
    return Where(storage, storage.directory)


def row(info: BackupInfo) -> dict[str, object]:
    """What a listing says of one backup, comparable across listings (a storage
    compares by identity, so the references are compared by name and label)."""
    return {
        "backup_id": info.backup_id,
        "prefix": info.prefix,
        "archive": (info.archive.name, info.archive.label),
        "manifest": None if info.manifest is None else (info.manifest.name, info.manifest.label),
        "created_at": info.created_at,
        "size_bytes": info.size_bytes,
        "file_count": info.file_count,
        "compression": info.compression,
        "problem": info.problem,
    }


def ids(location: Location, prefix: str | None = None) -> list[str]:
    return [b.backup_id for b in list_backups(location, prefix=prefix)]


def make_manifest(
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


def tar_bytes(comment: str | None, suffix: str = ".tar.gz") -> bytes:
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


def marked(backup_id: str, suffix: str = ".tar.gz") -> bytes:
    """An archive carrying our mark for ``backup_id``, as one made with --no-manifest does."""
    return tar_bytes(writer_comment(backup_id), suffix)


def add(
    where: Where,
    backup_id: str,
    suffix: str = ".tar.gz",
    data: bytes | None = None,
    manifest: BackupManifest | None = None,
) -> str:
    """An archive (by default one marked as ours for ``backup_id``) and, if given, its
    manifest; return the archive's name."""
    name = backup_id + suffix
    put_object(where.storage, name, marked(backup_id, suffix) if data is None else data)
    if manifest is not None:
        put_object(where.storage, backup_id + ".manifest.json", manifest.to_json().encode())
    return name


def put_json(where: Where, name: str, data: object) -> None:
    put_object(where.storage, name, json.dumps(data).encode())


def dead_writer(where: Where, name: str, claim: str | None = None) -> None:
    """Leave what a writer killed mid-write leaves."""
    if isinstance(where.storage, LocalStorage):
        # A killed process's partial: written, and no longer locked by anyone.
        (where.storage.directory / partial_name(claim or name)).write_bytes(b"half")
        return
    assert isinstance(where.storage, MemoryStorage)
    upload = where.storage.begin(name, claim=claim)
    upload.write(b"half")
    upload.abandon()


# --- list_backups ---------------------------------------------------------------------------


def test_list_reads_the_manifest(where: Where) -> None:
    """A complete backup is described from its manifest: aware time, counts, size, compression."""
    archive = add(
        where,
        "backup_20240501_030000",
        data=b"x" * 1234,
        manifest=make_manifest("backup_20240501_030000", "2024-05-01T12:00:00+09:00", sizes=(5, 6, 7)),
    )
    (info,) = list_backups(where.location)
    assert row(info) == {
        "backup_id": "backup_20240501_030000",
        "prefix": "backup",
        "archive": (archive, where.label(archive)),
        "manifest": ("backup_20240501_030000.manifest.json", where.label("backup_20240501_030000.manifest.json")),
        "created_at": datetime(2024, 5, 1, 3, 0, tzinfo=UTC),
        "size_bytes": 1234,
        "file_count": 3,
        "compression": "gz",
        "problem": None,
    }
    assert info.created_at is not None and info.created_at.utcoffset() == timedelta(hours=9)


def test_list_in_a_directory_gives_the_files_paths(directory: Where, tmp_path: Path) -> None:
    add(directory, "backup_20240101_000000", manifest=make_manifest("backup_20240101_000000", "2024-01-01T00:00:00Z"))
    (info,) = list_backups(tmp_path / "backups")
    assert info.archive_path == tmp_path / "backups" / "backup_20240101_000000.tar.gz"
    assert info.manifest_path == tmp_path / "backups" / "backup_20240101_000000.manifest.json"
    assert (info.archive.path, info.manifest and info.manifest.path) == (info.archive_path, info.manifest_path)


def test_list_takes_created_at_from_the_manifest_not_the_id(where: Where) -> None:
    add(where, "backup_20240101_000000", manifest=make_manifest("backup_20240101_000000", "2030-01-01T00:00:00+00:00"))
    assert list_backups(where.location)[0].created_at == datetime(2030, 1, 1, tzinfo=UTC)


def test_list_makes_a_seed_era_naive_time_aware(where: Where) -> None:
    """A seed-era naive created_at is read as local time and made aware."""
    add(where, "backup_20240101_000000", manifest=make_manifest("backup_20240101_000000", "2024-01-01T09:00:00"))
    created = list_backups(where.location)[0].created_at
    assert created == datetime(2024, 1, 1, 9, 0).astimezone()
    assert created is not None and created.tzinfo is not None


def test_list_reports_a_created_at_that_is_not_iso(where: Where) -> None:
    """Timed by its id, and the manifest's bad time is the backup's problem."""
    add(where, "backup_20240101_000000", manifest=make_manifest("backup_20240101_000000", "yesterday"))
    (info,) = list_backups(where.location)
    assert info.created_at == datetime(2024, 1, 1, tzinfo=UTC)
    label = where.label("backup_20240101_000000.manifest.json")
    assert info.problem == f"{label}: created_at 'yesterday' is not ISO 8601"


def test_list_shows_complete_backups_only(where: Where) -> None:
    """Manifests without archives, dead and live writers' partials and other objects are not backups."""
    add(where, "backup_20240101_000000", manifest=make_manifest("backup_20240101_000000", "2024-01-01T00:00:00+00:00"))
    put_object(
        where.storage,
        "backup_20240102_000000.manifest.json",
        make_manifest("backup_20240102_000000", "2024-01-02T00:00:00+00:00").to_json().encode(),
    )
    dead_writer(where, "backup_20240103_000000.tar.gz", claim="backup_20240103_000000")
    live = where.storage.begin("backup_20240104_000000.tar.gz", claim="backup_20240104_000000")
    live.write(marked("backup_20240104_000000"))
    put_object(where.storage, "notes.txt", b"hi")
    assert ids(where.location) == ["backup_20240101_000000"]
    live.commit()
    assert ids(where.location) == ["backup_20240101_000000", "backup_20240104_000000"]


def test_list_an_archive_without_a_manifest(where: Where) -> None:
    """An archive without a manifest is listed, timed by its id, when its mark names that id."""
    data = marked("backup_20240101_020304-2", ".tar.zst")
    archive = add(where, "backup_20240101_020304-2", suffix=".tar.zst", data=data)
    assert [row(info) for info in list_backups(where.location)] == [
        {
            "backup_id": "backup_20240101_020304-2",
            "prefix": "backup",
            "archive": (archive, where.label(archive)),
            "manifest": None,
            "created_at": datetime(2024, 1, 1, 2, 3, 4, tzinfo=UTC),
            "size_bytes": len(data),
            "file_count": None,
            "compression": "zst",
            "problem": None,
        }
    ]


def test_list_foreign_archives(where: Where) -> None:
    """An archive not named like an id counts only if our manifest names it."""
    add(where, "random", suffix=".tar.gz", data=tar_bytes(None))
    add(where, "photos", suffix=".tgz", manifest=make_manifest("photos", "2024-03-01T00:00:00+00:00", archive=".tgz"))
    ours = add(
        where, "album", suffix=".tar", manifest=make_manifest("album", "2024-03-01T00:00:00+00:00", archive=".tar")
    )
    listed = list_backups(where.location)
    assert [(b.backup_id, b.prefix, b.archive.name, b.compression) for b in listed] == [("album", None, ours, "")]
    assert listed[0].created_at == datetime(2024, 3, 1, tzinfo=UTC)


def test_list_skips_id_named_archives_that_are_not_ours(where: Where) -> None:
    """Names alone prove nothing: another tool's archive named like a backup id, a copy
    of ours under another id, our archive under a name we never use and something that
    is not an archive at all are not backups (they used to be listed, and so pruned)."""
    add(where, "db_20240105_000000")
    add(where, "db_20240101_000000", data=tar_bytes(None))  # a dump script's, made by tar
    add(where, "db_20240102_000000", data=marked("db_20240105_000000"))  # a renamed copy of ours
    add(where, "db_20240103_000000", suffix=".tgz")  # marked, but .tgz is never our spelling
    add(where, "db_20240107_000000", data=b"not even an archive")
    add(where, "db_20240108_000000", data=b"")
    assert ids(where.location) == ["db_20240105_000000"]
    assert ids(where.location, prefix="db") == ["db_20240105_000000"]


def test_list_skips_what_is_not_a_file_under_a_backups_name(directory: Where, tmp_path: Path) -> None:
    """A symlink to one of ours, a directory and a FIFO, named like backups, are not
    backups (and a FIFO under a manifest's name does not hang the listing)."""
    backups = tmp_path / "backups"
    ours = add(directory, "db_20240105_000000")
    (backups / "db_20240104_000000.tar.gz").symlink_to(ours)
    (backups / "db_20240106_000000.tar.gz").mkdir()
    os.mkfifo(backups / "db_20240109_000000.tar.gz")
    os.mkfifo(backups / "db_20240105_000000.manifest.json")
    assert ids(backups) == ["db_20240105_000000"]


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
def test_list_needs_our_manifest_or_our_mark(where: Where, variant: str) -> None:
    """An id-named archive without our mark is listed only if its manifest is ours in
    every respect: our format tag, its own id, and naming this very archive."""
    backup_id = "backup_20240101_000000"
    name = f"{backup_id}.manifest.json"
    ours = make_manifest(backup_id, "2024-01-01T00:00:00+00:00").to_dict()
    if variant == "other-tools-json":
        data: object = {"id": backup_id, "tables": ["users"], "created": "2024-01-01"}
    elif variant == "no-format-tag":
        data = {key: value for key, value in ours.items() if key != "format"}
    elif variant == "wrong-format-tag":
        data = {**ours, "format": "another-backup-tool"}
    elif variant == "another-backup-id":
        data = {**ours, "backup_id": "backup_20240101_000001"}
    elif variant == "names-another-archive":
        data = {**ours, "archive": {**ours["archive"], "name": "backup_20240101_000000.tar.zst"}}
    else:
        data = {**ours, "archive": None}
    put_json(where, name, data)
    add(where, backup_id, data=tar_bytes(None))
    assert list_backups(where.location) == []

    # Our mark in the archive is proof enough; the manifest that is not ours is reported,
    # and not taken as the backup's (so never removed with it).
    where.storage.delete(f"{backup_id}.tar.gz")
    add(where, backup_id)
    (info,) = list_backups(where.location)
    assert info.manifest is None and info.manifest_path is None and info.file_count is None
    assert info.problem is not None and info.problem.startswith(f"{where.label(name)}: not this backup's manifest")


def test_list_with_a_prefix_and_the_order(where: Where) -> None:
    """prefix= keeps that prefix only; results are oldest first."""
    add(where, "db_20240103_000000")
    add(where, "db_20240101_000000")
    add(where, "db_20240101_000000-2")
    add(where, "web_20240102_000000")
    add(where, "db_x_20240102_000000")
    add(where, "photos", data=b"x", manifest=make_manifest("photos", "2024-01-01T00:00:00+00:00"))
    assert ids(where.location, prefix="db") == ["db_20240101_000000", "db_20240101_000000-2", "db_20240103_000000"]
    assert ids(where.location) == [
        "db_20240101_000000",
        "db_20240101_000000-2",
        "photos",
        "db_x_20240102_000000",
        "web_20240102_000000",
        "db_20240103_000000",
    ]


def test_list_orders_same_second_claims_by_sequence(where: Where) -> None:
    """As text "-10" sorts before "-2"; the claims are listed in the order they were made."""
    for backup_id in ("db_20240101_000000-10", "db_20240101_000000-2", "db_20240101_000000"):
        add(where, backup_id)
    assert ids(where.location) == ["db_20240101_000000", "db_20240101_000000-2", "db_20240101_000000-10"]


def test_list_reports_a_damaged_manifest(where: Where) -> None:
    """A manifest that is not ours is reported as the backup's problem, not raised; the
    archive, marked as ours, is still listed (timed by its id)."""
    add(where, "backup_20240101_000000")
    put_object(where.storage, "backup_20240101_000000.manifest.json", b"{oops")
    (info,) = list_backups(where.location)
    label = where.label("backup_20240101_000000.manifest.json")
    assert info.problem == f"{label}: not this backup's manifest (not valid JSON)"
    assert info.created_at == datetime(2024, 1, 1, tzinfo=UTC)
    assert info.file_count is None and info.manifest is None


def test_list_reports_a_manifest_that_cannot_be_read() -> None:
    """A read error on the manifest (through the storage seam: we run as root, so no
    permission bit can cause one) is the backup's problem, not an exception."""
    memory = MemoryStorage("memory://b")
    where = Where(memory, memory)
    add(where, "backup_20240101_000000", manifest=make_manifest("backup_20240101_000000", "2024-01-01T00:00:00Z"))
    faulty = FaultyStorage(memory, Fault("open_read", 5, names="*.manifest.json"))
    (info,) = list_backups(faulty)
    assert info.problem == (
        "memory://b/backup_20240101_000000.manifest.json: not this backup's manifest "
        "(cannot read it: Input/output error)"
    )
    assert info.manifest is None


def test_list_reads_a_manifest_of_the_size_limit_and_refuses_one_byte_more(
    where: Where, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the limit lowered to this manifest's size, it is read; one byte lower, it is
    not ours (and the archive is listed by its mark, the manifest's problem said)."""
    import backup.listing as listing

    add(where, "backup_20240101_000000", manifest=make_manifest("backup_20240101_000000", "2024-01-01T00:00:00Z"))
    size = len(read_object(where.storage, "backup_20240101_000000.manifest.json"))
    monkeypatch.setattr(listing, "_MAX_MANIFEST_BYTES", size)
    (info,) = list_backups(where.location)
    assert info.problem is None and info.file_count == 2
    monkeypatch.setattr(listing, "_MAX_MANIFEST_BYTES", size - 1)
    (info,) = list_backups(where.location)
    assert info.file_count is None
    assert info.problem is not None and info.problem.endswith("(too large to be a manifest)")


def test_list_refuses_a_manifest_that_grew_past_the_limit_after_the_listing(
    where: Where, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing said it was small; what is read is one byte more than the limit. It is
    refused on what was read (not read whole), as if the listing had said so."""
    import backup.listing as listing

    add(where, "backup_20240101_000000", manifest=make_manifest("backup_20240101_000000", "2024-01-01T00:00:00Z"))
    size = len(read_object(where.storage, "backup_20240101_000000.manifest.json"))
    monkeypatch.setattr(listing, "_MAX_MANIFEST_BYTES", size - 1)
    real_list = where.storage.list_objects

    def stale() -> list[ObjectInfo]:
        return [replace(info, size=1) for info in real_list()]

    monkeypatch.setattr(where.storage, "list_objects", stale)
    (info,) = list_backups(where.storage)
    assert info.file_count is None
    assert info.problem is not None and info.problem.endswith("(too large to be a manifest)")


def test_list_does_not_read_a_manifest_of_more_than_a_gibibyte(directory: Where) -> None:
    """A file under a manifest's name of 1 GiB and one byte (sparse: it takes no room)
    is not ours, and is never read: its size alone refuses it."""
    add(directory, "backup_20240101_000000")
    assert isinstance(directory.storage, LocalStorage)
    with open(directory.storage.directory / "backup_20240101_000000.manifest.json", "wb") as handle:
        handle.truncate((1 << 30) + 1)
    # Were it opened, the read would fail and say so: its size alone must refuse it.
    unopened = FaultyStorage(directory.storage, Fault("open_read", 5, names="*.manifest.json"))
    (info,) = list_backups(unopened)
    assert info.problem is not None and info.problem.endswith("(too large to be a manifest)")


def test_backups_pruned_by_another_process_during_the_listing_are_left_out(where: Where) -> None:
    """Between the listing and the reads, another process removes every backup: each
    read then finds nothing (ENOENT). Nothing is raised, nothing is listed, and the
    clean-up removes nothing it could not read."""
    add(where, "backup_20240101_000000", manifest=make_manifest("backup_20240101_000000", "2024-01-01T00:00:00Z"))
    add(where, "backup_20240102_000000")  # listed by its mark alone
    put_object(
        where.storage,
        "backup_20240103_000000.manifest.json",
        make_manifest("backup_20240103_000000", "2024-01-03T00:00:00Z").to_json().encode(),
    )
    pruned = FaultyStorage(where.storage, Fault("open_read", errno.ENOENT, repeat=True))
    assert list_backups(pruned) == []
    assert clean_leftovers(pruned) == []
    assert len(where.names()) == 4
    # Without the other process, the manifest whose archive never landed is a leftover.
    assert clean_leftovers(where.location) == ["backup_20240103_000000.manifest.json"]


def test_list_a_location_that_does_not_exist(tmp_path: Path) -> None:
    """A backup location that does not exist holds no backups, and is not created."""
    assert list_backups(tmp_path / "none") == []
    assert not (tmp_path / "none").exists()
    assert list_backups(MemoryStorage(exists=False)) == []


def test_list_to_dict_gives_labels(where: Where) -> None:
    archive = add(where, "backup_20240101_000000")
    assert list_backups(where.location)[0].to_dict() == {
        "backup_id": "backup_20240101_000000",
        "prefix": "backup",
        "archive_path": where.label(archive),
        "manifest_path": None,
        "created_at": "2024-01-01T00:00:00+00:00",
        "size_bytes": len(marked("backup_20240101_000000")),
        "file_count": None,
        "compression": "gz",
        "encrypted_to": [],
        "sidecar_path": None,
        "problem": None,
    }


# --- clean_leftovers -----------------------------------------------------------------------


def test_clean_removes_dead_partials_and_orphan_manifests(where: Where) -> None:
    """Dead writers' partials and our manifests whose archive never landed are removed; backups stay."""
    add(where, "b_20240101_000000", manifest=make_manifest("b_20240101_000000", "2024-01-01T00:00:00+00:00"))
    put_object(
        where.storage,
        "b_20240102_000000.manifest.json",
        make_manifest("b_20240102_000000", "2024-01-02T00:00:00+00:00").to_json().encode(),
    )
    dead_writer(where, "b_20240103_000000.tar.gz", claim="b_20240103_000000")
    removed = clean_leftovers(where.location)
    assert removed == [partial_name("b_20240103_000000"), "b_20240102_000000.manifest.json"]
    where.assert_holds(["b_20240101_000000.manifest.json", "b_20240101_000000.tar.gz"])
    assert where.storage.claimed("b_20240103_000000") is False
    assert clean_leftovers(where.location) == []


def test_clean_removes_a_manifest_with_its_dead_writers_partial(where: Where) -> None:
    """A manifest whose archive's writer died goes with the partial."""
    dead_writer(where, "b_20240101_000000.tar.gz", claim="b_20240101_000000")  # claimed, then the manifest
    put_object(
        where.storage,
        "b_20240101_000000.manifest.json",
        make_manifest("b_20240101_000000", "2024-01-01T00:00:00+00:00").to_json().encode(),
    )
    assert sorted(clean_leftovers(where.location)) == [
        partial_name("b_20240101_000000"),
        "b_20240101_000000.manifest.json",
    ]
    where.assert_holds([])
    assert where.storage.claimed("b_20240101_000000") is False


def test_clean_keeps_the_manifest_of_a_live_writer(where: Where) -> None:
    """A manifest committed while its archive is still being written is kept."""
    backup_id = "b_20240101_000000"
    archive = where.storage.begin(backup_id + ".tar.gz", claim=backup_id)  # the live writer
    archive.write(marked(backup_id))
    put_object(
        where.storage,
        backup_id + ".manifest.json",
        make_manifest(backup_id, "2024-01-01T00:00:00+00:00").to_json().encode(),
    )
    assert clean_leftovers(where.location) == []
    where.assert_holds([f"{backup_id}.manifest.json"], hidden=(partial_name(backup_id),))
    assert where.storage.claimed(backup_id) is True
    archive.commit()
    assert clean_leftovers(where.location) == []
    assert ids(where.location) == [backup_id]


def test_clean_keeps_the_manifest_of_a_live_writer_of_an_unclaimed_archive(where: Where) -> None:
    """A writer may hold the archive's name rather than the id as its key: its
    committed manifest is not a leftover either."""
    backup_id = "b_20240101_000000"
    archive = where.storage.begin(backup_id + ".tar.gz")
    archive.write(marked(backup_id))
    put_object(
        where.storage,
        backup_id + ".manifest.json",
        make_manifest(backup_id, "2024-01-01T00:00:00+00:00").to_json().encode(),
    )
    assert clean_leftovers(where.location) == []
    archive.commit()
    assert ids(where.location) == [backup_id]


def test_clean_keeps_the_manifest_of_an_archive_landing_while_it_looks() -> None:
    """A writer gives up its claim only after its archive has landed; one that lands
    between the cleaner's two looks is not taken for a dead writer."""
    backup_id = "b_20240101_000000"

    class Landing(MemoryStorage):
        """Commits the live writer's archive the moment the cleaner asks about its claim."""

        writer = None

        def claimed(self, key: str) -> bool:
            if self.writer is not None and key == backup_id:
                self.writer.commit()
                self.writer = None
            return super().claimed(key)

    storage = Landing()
    storage.writer = storage.begin(backup_id + ".tar.gz", claim=backup_id)
    storage.writer.write(marked(backup_id))
    put_object(
        storage, backup_id + ".manifest.json", make_manifest(backup_id, "2024-01-01T00:00:00Z").to_json().encode()
    )
    assert clean_leftovers(storage) == []
    assert ids(storage) == [backup_id]


def test_clean_keeps_the_manifest_of_a_foreign_named_backup(where: Where) -> None:
    """A manifest beside an archive with its stem is not an orphan."""
    add(where, "photos", suffix=".tar", manifest=make_manifest("photos", "2024-01-01T00:00:00+00:00", archive=".tar"))
    assert clean_leftovers(where.location) == []
    where.assert_holds(["photos.manifest.json", "photos.tar"])


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
        "not-json",
    ],
)
def test_clean_removes_only_manifests_that_are_ours(where: Where, variant: str) -> None:
    """A manifest without its archive is removed only if it is ours in every respect;
    anyone else's JSON stays byte for byte (it used to be removed by every create)."""
    backup_id = "backup_20240101_000000"
    ours = make_manifest(backup_id, "2024-01-01T00:00:00+00:00").to_dict()
    name = f"{backup_id}.manifest.json"
    data: object
    if variant == "other-tools-json":
        name = "notes.manifest.json"
        data = {"notes": ["call the vendor"]}
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
        data = None
    if data is None:
        put_object(where.storage, name, b"{ not json")
    else:
        put_json(where, name, data)
    before = where.contents()

    assert clean_leftovers(where.location) == []

    assert where.contents() == before


def test_clean_keeps_a_symlink_to_our_manifest(directory: Where, tmp_path: Path) -> None:
    """A symlink under a manifest's name is not an object, even if it points at ours."""
    backup_id = "backup_20240101_000000"
    name = f"{backup_id}.manifest.json"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / name).write_text(make_manifest(backup_id, "2024-01-01T00:00:00+00:00").to_json())
    link = tmp_path / "backups" / name
    link.symlink_to(tmp_path / "elsewhere" / name)

    assert clean_leftovers(tmp_path / "backups") == []

    assert os.readlink(link) == str(tmp_path / "elsewhere" / name)
    assert (tmp_path / "elsewhere" / name).exists()


def test_clean_removes_only_partials_of_our_own_making(directory: Where, tmp_path: Path) -> None:
    """Dead writers' partials, named ``.obs-backup.<key>.partial``, go; another program's
    hidden ``.partial`` files (the old ``.<id>.partial`` naming included, which is no
    longer ours), and anything that is not a regular file, stay, locked or not."""
    backups = tmp_path / "backups"
    ours = [
        partial_name("b_20240101_000000"),
        partial_name("b_20240101_000000-2"),
        partial_name("b_20240101_000000.tar.zst"),
        partial_name("b_20240101_000000.manifest.json"),
        partial_name("obs-backup-state.json.4242"),
        partial_name("anything at all"),
    ]
    theirs = [
        ".download.partial",
        ".foo.partial",
        ".notes.tar.gz.partial",
        ".b_20240101_000000.partial",
        ".b_20240101_000000.manifest.json.4242.partial",
        "..obs-backup-state.json.4242.partial",
        ".obs-backup.partial",
        "obs-backup.b_20240101_000000.partial",
    ]
    for name in ours + theirs:
        (backups / name).write_bytes(b"half of something")
    (backups / partial_name("b_20240102_000000")).mkdir()  # a directory under one of our names
    os.mkfifo(backups / partial_name("b_20240103_000000"))
    before = {name: (backups / name).read_bytes() for name in theirs}

    assert sorted(clean_leftovers(backups)) == sorted(ours)

    assert {name: (backups / name).read_bytes() for name in theirs} == before
    assert (backups / partial_name("b_20240102_000000")).is_dir()
    assert (backups / partial_name("b_20240103_000000")).exists()


def test_clean_spares_a_live_partial_of_our_own_making(directory: Where, tmp_path: Path) -> None:
    """A name of ours is removed only if its writer is gone: a held lock keeps it."""
    live = tmp_path / "backups" / partial_name("b_20240101_000000.manifest.json.4242")
    fd = os.open(live, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert clean_leftovers(tmp_path / "backups") == []
        assert live.exists()
    finally:
        os.close(fd)
    assert clean_leftovers(tmp_path / "backups") == [live.name]


def test_clean_a_location_that_does_not_exist(tmp_path: Path) -> None:
    """Nothing to clean where there is no location; and nothing is created."""
    assert clean_leftovers(tmp_path / "none") == []
    assert not (tmp_path / "none").exists()
    assert clean_leftovers(MemoryStorage(exists=False)) == []
