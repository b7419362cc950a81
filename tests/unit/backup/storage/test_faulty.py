"""The fault-injecting wrapper (``support.storage.FaultyStorage``): without faults it
is the storage it wraps (it passes the contract), and each fault fires exactly when
and where it is told to."""

from __future__ import annotations

import errno

import pytest

from backup.storage.base import BackupStorage
from support.storage import Fault, FaultyStorage, MemoryStorage, put_object, read_object

from .contract import StorageContract, StorageFactory


class TestFaultyStorageWithoutFaults(StorageContract):
    keeps_marks = True

    @pytest.fixture
    def make_storage(self) -> StorageFactory:
        def make(*, created: bool = True) -> BackupStorage:
            return FaultyStorage(MemoryStorage(exists=created))

        return make

    def leave_dead_writer(
        self, storage: BackupStorage, name: str, claim: str | None = None, data: bytes = b"half"
    ) -> None:
        assert isinstance(storage, FaultyStorage) and isinstance(storage.inner, MemoryStorage)
        upload = storage.inner.begin(name, claim=claim)
        upload.write(data)
        upload.abandon()


def test_the_nth_delete_fails_once_naming_the_object() -> None:
    storage = FaultyStorage(MemoryStorage("memory://m"), Fault("delete", errno.EACCES, nth=2))
    for name in ("a", "b", "c"):
        put_object(storage, name)
    storage.delete("a")
    with pytest.raises(PermissionError) as caught:
        storage.delete("b")
    assert (caught.value.filename, caught.value.strerror) == ("memory://m/b", "Permission denied")
    storage.delete("c")
    assert [info.name for info in storage.list_objects()] == ["b"]
    assert storage.called("delete") == ["a", "b", "c"]
    assert storage.faults[0].fired == 1


def test_repeat_fails_every_call_from_the_nth_on() -> None:
    storage = FaultyStorage(MemoryStorage(), Fault("list_objects", OSError(errno.EIO, "gone"), nth=2, repeat=True))
    storage.list_objects()
    for _ in range(3):
        with pytest.raises(OSError, match="gone"):
            storage.list_objects()


def test_a_fault_counts_only_the_names_it_matches() -> None:
    storage = FaultyStorage(MemoryStorage(), Fault("commit", errno.EIO, names="*.tar.gz"))
    put_object(storage, "m.manifest.json")
    upload = storage.begin("a.tar.gz", claim="a")
    upload.write(b"archive")
    with pytest.raises(OSError, match="Input/output error"):
        upload.commit()
    # A failed commit aborts, as the contract says: no object, and the claim is free.
    assert [info.name for info in storage.list_objects()] == ["m.manifest.json"]
    assert storage.claimed("a") is False
    put_object(storage, "b.tar.gz")  # the fault was spent


def test_a_full_disk_takes_what_fits_then_refuses_every_write() -> None:
    memory = MemoryStorage()
    full = OSError(errno.ENOSPC, "No space left on device")
    storage = FaultyStorage(memory, Fault("write", full, room=10, names="*.tar"))
    upload = storage.begin("a.tar")
    upload.write(b"123456")
    with pytest.raises(OSError, match="No space left"):
        upload.write(b"789abc")
    with pytest.raises(OSError, match="No space left"):
        upload.write(b"x")
    put_object(storage, "b.json", b"not on the full disk")  # other names are not counted
    upload.abort()
    assert storage.called("write") == ["a.tar", "a.tar", "a.tar", "b.json"]
    assert read_object(storage, "b.json") == b"not on the full disk"


def test_the_bytes_before_a_full_disk_reach_the_wrapped_upload() -> None:
    written: list[bytes] = []

    class Recording(MemoryStorage):
        def begin(self, name: str, claim: str | None = None, size_hint: int | None = None, mark: str | None = None):  # type: ignore[no-untyped-def]
            upload = super().begin(name, claim)
            real = upload.write

            def write(data: bytes | bytearray | memoryview) -> int:
                written.append(bytes(data))
                return real(data)

            upload.write = write  # type: ignore[method-assign]
            return upload

    storage = FaultyStorage(Recording(), Fault("write", errno.ENOSPC, room=4))
    upload = storage.begin("a.tar")
    with pytest.raises(OSError):
        upload.write(b"abcdefgh")
    assert written == [b"abcd"]


def test_unknown_operations_and_misplaced_room_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        Fault("rename", errno.EIO)
    with pytest.raises(ValueError, match="room"):
        Fault("delete", errno.EIO, room=3)
