"""The in-memory emulator (``support.storage.MemoryStorage``) against the contract, plus
what the emulator adds: an injected clock, a location that does not exist yet, and
writers that die when they are dropped."""

from __future__ import annotations

import gc

import pytest

from backup.errors import StorageError
from backup.storage.base import BackupStorage, ObjectInfo, ObjectRef
from support.storage import MemoryStorage, put_object

from .contract import StorageContract, StorageFactory


class TestMemoryStorage(StorageContract):
    keeps_marks = True

    @pytest.fixture
    def make_storage(self) -> StorageFactory:
        def make(*, created: bool = True) -> BackupStorage:
            return MemoryStorage(exists=created)

        return make

    def leave_dead_writer(
        self, storage: BackupStorage, name: str, claim: str | None = None, data: bytes = b"half"
    ) -> None:
        assert isinstance(storage, MemoryStorage)
        upload = storage.begin(name, claim=claim)
        upload.write(data)
        upload.abandon()


def test_modified_times_come_from_the_injected_clock() -> None:
    ticks = iter([1_700_000_000.0, 1_700_000_060.5])
    storage = MemoryStorage(clock=lambda: next(ticks))
    put_object(storage, "a.tar", b"12345")
    put_object(storage, "b.tar")
    assert storage.list_objects() == [ObjectInfo("a.tar", 5, 1_700_000_000.0), ObjectInfo("b.tar", 4, 1_700_000_060.5)]
    assert storage.stat("b.tar").modified == 1_700_000_060.5


def test_an_object_is_timed_at_its_commit_not_its_begin() -> None:
    now = [100.0]
    storage = MemoryStorage(clock=lambda: now[0])
    upload = storage.begin("a.tar")
    upload.write(b"x")
    now[0] = 250.0
    upload.commit()
    assert storage.stat("a.tar").modified == 250.0


def test_a_location_that_does_not_exist_yet() -> None:
    """It lists nothing, and writing into it fails as writing into a missing directory does."""
    storage = MemoryStorage("memory://nowhere", exists=False)
    assert storage.list_objects() == [] and storage.clean_partials() == []
    assert storage.read_record(".state") is None
    with pytest.raises(FileNotFoundError):
        storage.begin("a.tar")
    with pytest.raises(FileNotFoundError):
        storage.write_record(".state", b"{}")
    with storage.lock():  # taking the lock creates it, as for a directory
        pass
    assert storage.exists()


def test_where_an_object_is() -> None:
    storage = MemoryStorage("memory://site/backups")
    assert storage.location == "memory://site/backups"
    assert storage.describe("a.tar") == "memory://site/backups/a.tar"
    assert storage.local_path("a.tar") is None


def test_a_dropped_writer_is_dead() -> None:
    """An upload nobody holds any more (its process gone) is a dead writer's: its key
    stays held until clean_partials."""
    storage = MemoryStorage()
    upload = storage.begin("a.tar", claim="a")
    upload.write(b"half")
    del upload
    gc.collect()
    assert storage.claimed("a") is True
    assert storage.clean_partials() == [".obs-backup.a.partial"]
    assert storage.claimed("a") is False


def test_a_dead_writer_cannot_commit_or_free_another_writers_key() -> None:
    storage = MemoryStorage()
    dead = storage.begin("a.tar", claim="a")
    dead.abandon()
    storage.clean_partials()
    live = storage.begin("a.tar", claim="a")
    dead.abort()  # too late to matter: the key is the new writer's now
    assert storage.claimed("a") is True
    with pytest.raises(StorageError, match="died"):
        dead.commit()
    live.commit()
    assert [info.name for info in storage.list_objects()] == ["a.tar"]


def test_records_have_hidden_names() -> None:
    """Stricter than a directory, on purpose: a record under a visible name would be listed."""
    storage = MemoryStorage()
    for name in ("state.json", "./x", ".a/b"):
        with pytest.raises(StorageError, match="record names"):
            storage.write_record(name, b"")


def test_object_refs_into_a_remote_storage() -> None:
    """A reference into a storage without local files has no path; its label, and its
    siblings' labels, come from the storage's descriptions."""
    storage = MemoryStorage("memory://b")
    ref = ObjectRef(storage, "x_20240101_000000.tar.gz", storage.describe("x_20240101_000000.tar.gz"))
    assert ref.path is None
    sibling = ref.sibling("x_20240101_000000.manifest.json")
    assert sibling == ObjectRef(
        storage, "x_20240101_000000.manifest.json", "memory://b/x_20240101_000000.manifest.json"
    )
    custom = ObjectRef(storage, "a.tar", "the archive").sibling("a.manifest.json")
    assert custom.label == "memory://b/a.manifest.json"
