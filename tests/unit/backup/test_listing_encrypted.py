"""Tests for backup.listing on encrypted backups: what makes one listed, and what the
clean-up of interrupted runs removes, in a directory's commit order and in an object
store's (``MemoryStorage(manifest_commits=True)``, which keeps marks as a bucket does).
Each was a mutant of ``make mutate`` that no test caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backup import BackupConfig, create_backup
from backup.listing import clean_leftovers, list_backups
from backup.storage.base import BackupStorage
from support.agekeys import AgeKey, new_key
from support.clock import fixed_now, utc
from support.storage import MemoryStorage, put_object, read_object


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> AgeKey:
    return new_key(tmp_path_factory.mktemp("keys"))


def _backup(storage: BackupStorage, source: Path, key: AgeKey, day: int, prefix: str = "backup") -> str:
    source.mkdir(exist_ok=True)
    (source / "a.txt").write_text("a\n")
    config = BackupConfig(source, Path("/unused"), prefix=prefix, compression="", encrypt_to=[key.recipient])
    result = create_backup(config, storage=storage, now=fixed_now(utc(2026, 3, day)))
    assert result.success, result.error
    assert result.backup_id is not None
    return result.backup_id


@pytest.fixture(params=["directory order", "object store order"])
def storage(request: pytest.FixtureRequest) -> MemoryStorage:
    return MemoryStorage(manifest_commits=request.param == "object store order")


def test_encrypted_backups_are_listed_by_prefix_with_their_sidecar_time(
    storage: MemoryStorage, key: AgeKey, tmp_path: Path
) -> None:
    first = _backup(storage, tmp_path / "s", key, 1, prefix="app")
    second = _backup(storage, tmp_path / "s", key, 2, prefix="db")
    assert [b.backup_id for b in list_backups(storage, prefix="app")] == [first]
    assert [b.backup_id for b in list_backups(storage, prefix="db")] == [second]
    [listed] = list_backups(storage, prefix="app")
    sidecar = json.loads(read_object(storage, f"{first}.sidecar.json"))
    assert listed.created_at is not None and listed.created_at.isoformat() == sidecar["created_at"]
    assert listed.problem is None and listed.recipients == (key.recipient,)


def test_a_sidecar_with_a_time_that_is_not_iso_is_listed_with_the_ids_time_and_a_problem(
    storage: MemoryStorage, key: AgeKey, tmp_path: Path
) -> None:
    backup_id = _backup(storage, tmp_path / "s", key, 1)
    name = f"{backup_id}.sidecar.json"
    data = json.loads(read_object(storage, name))
    data["created_at"] = "yesterday"
    storage.delete(name)
    put_object(storage, name, json.dumps(data).encode())
    [listed] = list_backups(storage)
    assert listed.created_at == utc(2026, 3, 1)
    assert listed.problem is not None and "created_at 'yesterday' is not ISO 8601" in listed.problem


def test_a_sidecar_naming_another_archive_lists_nothing(storage: MemoryStorage, key: AgeKey, tmp_path: Path) -> None:
    backup_id = _backup(storage, tmp_path / "s", key, 1)
    archive = f"{backup_id}.tar.age"
    data = read_object(storage, archive)
    storage.delete(archive)
    put_object(storage, f"{backup_id}.tar.gz.age", data)  # renamed: the sidecar names another
    assert list_backups(storage) == []


@pytest.mark.parametrize("damage", ["too large", "unreadable"])
def test_a_sidecar_too_large_or_unreadable_is_not_ours(damage: str, key: AgeKey, tmp_path: Path) -> None:
    storage = MemoryStorage()
    backup_id = _backup(storage, tmp_path / "s", key, 1)
    name = f"{backup_id}.sidecar.json"
    if damage == "too large":
        data = read_object(storage, name)
        storage.delete(name)
        put_object(storage, name, data.rstrip() + b" " * (1 << 20) + b"\n")  # still valid JSON
        assert list_backups(storage) == []
        assert clean_leftovers(storage) == []  # and never removed as a leftover either
    else:
        from support.storage import Fault, FaultyStorage

        faulty = FaultyStorage(storage, Fault("open_read", 5, names=name, repeat=True))
        assert list_backups(faulty) == []


def test_in_a_directory_a_cut_off_run_leaves_a_sidecar_that_the_next_removes_unless_a_writer_holds_it(
    key: AgeKey, tmp_path: Path
) -> None:
    storage = MemoryStorage()
    backup_id = _backup(storage, tmp_path / "s", key, 1)
    storage.delete(f"{backup_id}.tar.age")  # as if killed before the archive was linked
    held = storage.begin(f"{backup_id}.tar.age")  # a writer still at work on the archive
    assert clean_leftovers(storage) == []
    held.abort()
    assert sorted(clean_leftovers(storage)) == sorted([f"{backup_id}.sidecar.json", f"{backup_id}.manifest.json.age"])
    assert [info.name for info in storage.list_objects()] == []


def test_in_an_object_store_what_a_cut_off_run_left_goes_only_when_marked_ours_and_unclaimed(
    key: AgeKey, tmp_path: Path
) -> None:
    storage = MemoryStorage(manifest_commits=True)
    kept = _backup(storage, tmp_path / "s", key, 1)
    cut = _backup(storage, tmp_path / "s", key, 2)
    storage.delete(f"{cut}.sidecar.json")  # cut off before its commit point
    put_object(storage, "other_20240101_000000.tar.age", b"age-encryption.org/v1\n", claim=None)  # no mark
    put_object(storage, "notes.manifest.json.age", b"age-encryption.org/v1\n")
    sidecar_writer = storage.begin(f"{cut}.sidecar.json")  # its writer is still at work
    assert clean_leftovers(storage) == []
    sidecar_writer.abort()
    removed = clean_leftovers(storage)
    assert sorted(removed) == sorted([f"{cut}.tar.age", f"{cut}.manifest.json.age"])
    names = sorted(info.name for info in storage.list_objects())
    assert names == sorted(
        [
            f"{kept}.tar.age",
            f"{kept}.manifest.json.age",
            f"{kept}.sidecar.json",
            "other_20240101_000000.tar.age",
            "notes.manifest.json.age",
        ]
    )


def test_in_an_object_store_a_sidecar_landing_during_clean_up_keeps_the_backup(key: AgeKey, tmp_path: Path) -> None:
    """The writer commits its sidecar between the look at the claims and the removal:
    the clean-up looks for the sidecar again after the claims, and keeps everything."""
    storage = MemoryStorage(manifest_commits=True)
    backup_id = _backup(storage, tmp_path / "s", key, 1)
    sidecar = read_object(storage, f"{backup_id}.sidecar.json")
    storage.delete(f"{backup_id}.sidecar.json")

    real_claimed = storage.claimed

    def claimed(key_name: str) -> bool:
        if not storage._objects.get(f"{backup_id}.sidecar.json"):
            put_object(storage, f"{backup_id}.sidecar.json", sidecar)
        return real_claimed(key_name)

    storage.claimed = claimed  # type: ignore[method-assign]
    assert clean_leftovers(storage) == []
    assert len(list_backups(storage)) == 1


def test_in_an_object_store_young_leftovers_stay(key: AgeKey, tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    storage = MemoryStorage(manifest_commits=True, clock=lambda: now[0])
    storage.grace_seconds = 3600.0  # type: ignore[misc]
    backup_id = _backup(storage, tmp_path / "s", key, 1)
    storage.delete(f"{backup_id}.sidecar.json")
    assert clean_leftovers(storage) == []
    now[0] += 3601
    assert len(clean_leftovers(storage)) == 2


def test_a_manifest_too_large_to_be_one_is_never_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import backup.listing as listing

    storage = MemoryStorage()
    source = tmp_path / "s"
    source.mkdir()
    (source / "a").write_text("a")
    result = create_backup(BackupConfig(source, Path("/unused")), storage=storage, now=fixed_now(utc(2026, 3, 1)))
    assert result.success
    manifest = f"{result.backup_id}.manifest.json"
    monkeypatch.setattr(listing, "_MAX_MANIFEST_BYTES", len(read_object(storage, manifest)) - 1)
    [listed] = list_backups(storage)
    assert listed.manifest is None  # listed by its mark, its manifest not read
    assert listed.problem is not None and "too large to be a manifest" in listed.problem


def _plain(storage: MemoryStorage, source: Path, day: int) -> str:
    source.mkdir(exist_ok=True)
    (source / "a.txt").write_text("a\n")
    result = create_backup(BackupConfig(source, Path("/unused")), storage=storage, now=fixed_now(utc(2026, 3, day)))
    assert result.success, result.error
    assert result.backup_id is not None
    return result.backup_id


def test_in_an_object_store_an_archive_without_its_manifest_goes_once_old_enough(tmp_path: Path) -> None:
    """A plain archive whose run was cut off before its manifest (the commit point) is
    removed by the next clean-up, once older than the grace period; one whose manifest
    is there, or that is not marked as ours in its first header, stays."""
    now = [1_800_000_000.0]
    storage = MemoryStorage(manifest_commits=True, clock=lambda: now[0])
    storage.grace_seconds = 60.0  # type: ignore[misc]
    kept, cut = _plain(storage, tmp_path / "s", 1), _plain(storage, tmp_path / "s", 2)
    storage.delete(f"{cut}.manifest.json")
    put_object(storage, "backup_20240101_000000.tar.gz", b"not an archive of ours")
    assert clean_leftovers(storage) == []  # young
    now[0] += 61
    assert clean_leftovers(storage) == [f"{cut}.tar.gz"]
    assert sorted(info.name for info in storage.list_objects()) == sorted(
        ["backup_20240101_000000.tar.gz", f"{kept}.manifest.json", f"{kept}.tar.gz"]
    )


def test_in_a_directory_a_young_manifest_without_its_archive_stays(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    storage = MemoryStorage(clock=lambda: now[0])
    storage.grace_seconds = 60.0  # type: ignore[misc]
    backup_id = _plain(storage, tmp_path / "s", 1)
    storage.delete(f"{backup_id}.tar.gz")
    assert clean_leftovers(storage) == []
    now[0] = 1_800_000_059.5
    assert clean_leftovers(storage) == []
    now[0] = 1_800_000_060.0  # exactly the grace period old: young no more
    assert clean_leftovers(storage) == [f"{backup_id}.manifest.json"]


def test_only_encrypted_manifests_named_by_an_id_are_looked_at(key: AgeKey, tmp_path: Path) -> None:
    storage = MemoryStorage(manifest_commits=True)
    put_object(storage, "notes.manifest.json.age", b"age-encryption.org/v1\n")
    storage._objects["notes.manifest.json.age"].mark = "notes"  # even marked, it names no backup
    assert clean_leftovers(storage) == []
    assert [info.name for info in storage.list_objects()] == ["notes.manifest.json.age"]


def test_a_sidecar_of_the_size_limit_is_read_and_one_byte_more_is_not(
    key: AgeKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the limit lowered to this sidecar's size, the backup is listed; one byte
    lower, its sidecar is not ours and nothing is listed."""
    import backup.listing as listing

    storage = MemoryStorage()
    _backup(storage, tmp_path / "s", key, 1)
    [sidecar] = [info for info in storage.list_objects() if info.name.endswith(".sidecar.json")]
    monkeypatch.setattr(listing, "_MAX_SIDECAR_BYTES", sidecar.size)
    assert len(list_backups(storage)) == 1
    monkeypatch.setattr(listing, "_MAX_SIDECAR_BYTES", sidecar.size - 1)
    assert list_backups(storage) == []


def test_in_a_directory_a_young_sidecar_without_its_archive_stays(key: AgeKey, tmp_path: Path) -> None:
    """A sidecar is written before the archive lands: inside the grace period, one whose
    archive is missing may be a writer's that is still at work, and stays."""
    now = [1_800_000_000.0]
    storage = MemoryStorage(clock=lambda: now[0])
    storage.grace_seconds = 60.0  # type: ignore[misc]
    backup_id = _backup(storage, tmp_path / "s", key, 1)
    storage.delete(f"{backup_id}.tar.age")
    assert clean_leftovers(storage) == []
    now[0] += 61
    assert sorted(clean_leftovers(storage)) == sorted([f"{backup_id}.sidecar.json", f"{backup_id}.manifest.json.age"])


@pytest.mark.parametrize("held", ["manifest", "backup id"])
def test_in_an_object_store_an_archive_whose_manifest_writer_is_at_work_stays(
    held: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old enough to be a leftover, its manifest missing: but a writer holds the
    manifest's claim, or the backup id's (a writer claims the id before it writes
    anything), so the manifest may yet land. It stays until the claim is let go."""
    storage = MemoryStorage(manifest_commits=True)
    backup_id = _plain(storage, tmp_path / "s", 1)
    storage.delete(f"{backup_id}.manifest.json")
    if held == "manifest":
        writer = storage.begin(f"{backup_id}.manifest.json")
        assert clean_leftovers(storage) == []
        writer.abort()
    else:
        real_claimed = storage.claimed
        monkeypatch.setattr(storage, "claimed", lambda key: key == backup_id or real_claimed(key))
        assert clean_leftovers(storage) == []
        monkeypatch.setattr(storage, "claimed", real_claimed)
    assert clean_leftovers(storage) == [f"{backup_id}.tar.gz"]
