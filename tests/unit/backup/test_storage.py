"""The BackupStorage contract, run against every implementation, plus LocalStorage specifics.

The contract is the one written at the top of ``backup/storage.py``. ``MemoryStorage``
(``memory_storage.py`` beside this file) exists to show the contract is not just a
description of LocalStorage.
"""

from __future__ import annotations

import gc
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# pytest's default "prepend" import mode puts this directory on sys.path.
from memory_storage import MemoryStorage

from backup.errors import StorageError
from backup.storage import BackupStorage, LocalStorage


@dataclass
class Harness:
    """A storage under test and a way to read back what it committed."""

    storage: BackupStorage
    read: Callable[[str], bytes]


def _local(tmp_path: Path) -> Harness:
    storage = LocalStorage(tmp_path / "store")
    storage.ensure()
    return Harness(storage, lambda name: storage.path(name).read_bytes())


def _memory(tmp_path: Path) -> Harness:
    storage = MemoryStorage()
    return Harness(storage, storage.read)


@pytest.fixture(params=[_local, _memory], ids=["local", "memory"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    """Each contract test runs once per implementation."""
    factory: Callable[[Path], Harness] = request.param
    return factory(tmp_path)


def _put(storage: BackupStorage, name: str, data: bytes = b"data", claim: str | None = None) -> None:
    pending = storage.begin(name, claim=claim)
    pending.stream.write(data)
    pending.commit()


# --- the contract -------------------------------------------------------------------


def test_implementations_satisfy_protocol_shape(harness: Harness) -> None:
    """Both implementations have the protocol's methods and the pending object's attributes."""
    pending = harness.storage.begin("x.tar")
    assert pending.name == "x.tar"
    assert pending.stream.writable() is True
    for method in ("begin", "names", "delete", "clean_partials"):
        assert callable(getattr(harness.storage, method))
    pending.abort()


def test_pending_invisible_until_commit(harness: Harness) -> None:
    """Nothing shows under the name until commit; then the bytes are all there."""
    storage = harness.storage
    pending = storage.begin("a.tar.gz")
    pending.stream.write(b"hello ")
    pending.stream.write(b"world")
    assert storage.names() == []
    pending.commit()
    assert storage.names() == ["a.tar.gz"]
    assert harness.read("a.tar.gz") == b"hello world"


def test_abort_leaves_nothing(harness: Harness) -> None:
    """An aborted write leaves no object and no partial, and frees the name."""
    storage = harness.storage
    pending = storage.begin("a_20240101_000000.tar", claim="a_20240101_000000")
    pending.stream.write(b"half")
    pending.abort()
    assert storage.names() == []
    assert storage.clean_partials() == []
    _put(storage, "a.tar", b"second", claim="a")
    assert harness.read("a.tar") == b"second"


def test_abort_after_commit_does_nothing(harness: Harness) -> None:
    """abort() after commit() keeps the object."""
    pending = harness.storage.begin("a.tar")
    pending.stream.write(b"kept")
    pending.commit()
    pending.abort()
    assert harness.storage.names() == ["a.tar"]
    assert harness.read("a.tar") == b"kept"


def test_commit_twice_or_after_abort_raises(harness: Harness) -> None:
    """A pending object is committed at most once."""
    first = harness.storage.begin("a.tar")
    first.commit()
    with pytest.raises(StorageError):
        first.commit()
    second = harness.storage.begin("b.tar")
    second.abort()
    with pytest.raises(StorageError):
        second.commit()
    assert harness.storage.names() == ["a.tar"]


def test_claim_refused_while_another_writer_holds_it(harness: Harness) -> None:
    """Two writers cannot hold one claim; once released it can be taken again."""
    storage = harness.storage
    holder = storage.begin("b_1.tar.gz", claim="b_1")
    with pytest.raises(FileExistsError):
        storage.begin("b_1.tar.xz", claim="b_1")
    other = storage.begin("b_1-2.tar.gz", claim="b_1-2")  # a different claim is free
    holder.abort()
    again = storage.begin("b_1.tar.xz", claim="b_1")
    again.commit()
    other.commit()
    assert storage.names() == ["b_1-2.tar.gz", "b_1.tar.xz"]


def test_same_name_refused_while_another_writer_holds_it(harness: Harness) -> None:
    """Without a claim, the name itself is the key a writer holds."""
    holder = harness.storage.begin("m.json")
    with pytest.raises(FileExistsError):
        harness.storage.begin("m.json")
    holder.commit()


def test_claim_refused_while_committed_object_has_its_prefix(harness: Harness) -> None:
    """A claim is refused while a committed object's name starts with claim + "."."""
    storage = harness.storage
    _put(storage, "b_1.manifest.json")
    with pytest.raises(FileExistsError):
        storage.begin("b_1.tar.gz", claim="b_1")
    # Names that merely start with the claim, without the dot, do not block it.
    _put(storage, "b_2-2.tar")
    _put(storage, "b_2x.tar")
    pending = storage.begin("b_2.tar", claim="b_2")
    pending.commit()
    assert storage.names() == ["b_1.manifest.json", "b_2-2.tar", "b_2.tar", "b_2x.tar"]


def test_begin_refuses_existing_name(harness: Harness) -> None:
    """A committed name cannot be started again."""
    _put(harness.storage, "a.tar", b"old")
    with pytest.raises(FileExistsError):
        harness.storage.begin("a.tar")
    assert harness.read("a.tar") == b"old"


def test_commit_never_replaces_existing_object(harness: Harness) -> None:
    """Of two writers racing for one name, the second commit fails and changes nothing."""
    storage = harness.storage
    first = storage.begin("a.tar", claim="c1")
    second = storage.begin("a.tar", claim="c2")
    first.stream.write(b"first")
    second.stream.write(b"second")
    first.commit()
    with pytest.raises(FileExistsError):
        second.commit()
    assert storage.names() == ["a.tar"]
    assert harness.read("a.tar") == b"first"
    assert storage.clean_partials() == []  # the loser left no partial behind


@pytest.mark.parametrize("name", ["a/b.tar", ".hidden.tar", "../x.tar"])
def test_begin_refuses_unsafe_names(harness: Harness, name: str) -> None:
    """Object names may not contain '/' or start with '.'."""
    with pytest.raises(StorageError):
        harness.storage.begin(name)


def test_delete(harness: Harness) -> None:
    """delete() removes one object; deleting a missing one is FileNotFoundError."""
    _put(harness.storage, "a.tar")
    _put(harness.storage, "b.tar")
    harness.storage.delete("a.tar")
    assert harness.storage.names() == ["b.tar"]
    with pytest.raises(FileNotFoundError):
        harness.storage.delete("a.tar")


def test_names_sorted_and_exclude_partials(harness: Harness) -> None:
    """names() is sorted and never lists objects still being written."""
    storage = harness.storage
    for name in ["c.tar", "a.tar", "b.manifest.json"]:
        _put(storage, name)
    pending = storage.begin("0.tar", claim="0")
    assert storage.names() == ["a.tar", "b.manifest.json", "c.tar"]
    pending.abort()


def test_clean_partials_spares_live_writer(harness: Harness) -> None:
    """A writer still at work keeps its partial through a clean-up and can commit after."""
    storage = harness.storage
    pending = storage.begin("a.tar", claim="a")
    pending.stream.write(b"in progress")
    assert storage.clean_partials() == []
    pending.stream.write(b"!")
    pending.commit()
    assert harness.read("a.tar") == b"in progress!"


def test_dead_writer_blocks_its_key_until_cleaned(harness: Harness) -> None:
    """A writer that vanished (its stream closed, as when a process dies) leaves a partial
    that holds its key until clean_partials() removes it."""
    storage = harness.storage
    pending = storage.begin("a_20240101_000000.tar", claim="a_20240101_000000")
    pending.stream.write(b"half")
    pending.stream.close()
    del pending
    gc.collect()
    assert storage.names() == []
    with pytest.raises(FileExistsError):
        storage.begin("a_20240101_000000.tar", claim="a_20240101_000000")
    assert storage.clean_partials() == [".a_20240101_000000.partial"]
    assert storage.clean_partials() == []
    _put(storage, "a_20240101_000000.tar", b"whole", claim="a_20240101_000000")
    assert harness.read("a_20240101_000000.tar") == b"whole"


# --- LocalStorage specifics -----------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    """An existing, empty local backup directory."""
    storage = LocalStorage(tmp_path / "store")
    storage.ensure()
    return storage


@pytest.fixture(params=[0o000, 0o022, 0o777], ids=["umask000", "umask022", "umask777"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under a given umask."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_local_files_are_private_regardless_of_umask(store: LocalStorage, umask: int) -> None:
    """Partials and committed objects are mode 0600 whatever the umask."""
    pending = store.begin("a.tar", claim="a")
    partial = store.directory / ".a.partial"
    assert stat.S_IMODE(partial.stat().st_mode) == 0o600
    pending.commit()
    assert stat.S_IMODE(store.path("a.tar").stat().st_mode) == 0o600
    assert os.listdir(store.directory) == ["a.tar"]


def test_local_partial_name_and_cleanup_on_abort(store: LocalStorage) -> None:
    """The partial is ".<claim or name>.partial" and abort removes it."""
    pending = store.begin("a.tar.gz", claim="a")
    assert os.listdir(store.directory) == [".a.partial"]
    pending.abort()
    assert os.listdir(store.directory) == []
    unclaimed = store.begin("m.json")
    assert os.listdir(store.directory) == [".m.json.partial"]
    unclaimed.abort()


def test_local_clean_partials_removes_unlocked_partial(store: LocalStorage) -> None:
    """A partial no process holds a lock on (its writer is gone) is removed."""
    # Created without a lock: exactly what a killed writer leaves behind.
    (store.directory / ".backup_20240101_000000.partial").write_bytes(b"half")
    (store.directory / ".notes").write_bytes(b"not a partial")
    _put(store, "kept.tar")
    assert store.clean_partials() == [".backup_20240101_000000.partial"]
    assert sorted(os.listdir(store.directory)) == [".notes", "kept.tar"]


def test_local_clean_partials_spares_locked_partial(store: LocalStorage) -> None:
    """A partial whose writer is alive (still open, holding its lock) survives."""
    pending = store.begin("b_20240101_000000.tar", claim="b_20240101_000000")
    (store.directory / ".b_20240101_000001.partial").write_bytes(b"")
    assert store.clean_partials() == [".b_20240101_000001.partial"]
    assert os.listdir(store.directory) == [".b_20240101_000000.partial"]
    pending.commit()
    assert os.listdir(store.directory) == ["b_20240101_000000.tar"]


def test_local_names_of_missing_directory_is_empty(tmp_path: Path) -> None:
    """A backup directory that does not exist yet holds nothing."""
    storage = LocalStorage(tmp_path / "absent")
    assert storage.names() == []
    assert storage.clean_partials() == []


def test_local_names_of_file_raises_storage_error(tmp_path: Path) -> None:
    """A file in place of the directory is a StorageError naming it."""
    path = tmp_path / "file"
    path.write_bytes(b"")
    with pytest.raises(StorageError) as info:
        LocalStorage(path).names()
    assert info.value.path == str(path)


def test_local_ensure_creates_directory_and_refuses_file(tmp_path: Path) -> None:
    """ensure() creates missing parents; a file in the way is a StorageError."""
    storage = LocalStorage(tmp_path / "a" / "b")
    storage.ensure()
    assert storage.directory.is_dir()
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError):
        LocalStorage(blocker).ensure()
