"""The ``BackupStorage`` contract as tests, for every implementation to pass.

The contract is the one written at the top of ``backup/storage/base.py``. Each
implementation gets one small test module holding a subclass of ``StorageContract``
that provides two things:

* the ``make_storage`` fixture: a factory returning a new, empty storage at each call
  (``make_storage(created=False)``: one whose location does not exist yet);
* ``leave_dead_writer(storage, name, claim, data)``: leave behind exactly what a writer
  that died mid-write leaves (a killed process, a lost connection).

Everything else here is written against the protocol only, so a new location (S3, say)
is one new subclass module, and whatever it passes, the rest of the library can rely on.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from typing import Protocol

import pytest

from backup.errors import LockError, StorageError
from backup.storage.base import BackupStorage
from support.storage import put_object, read_object


class StorageFactory(Protocol):
    def __call__(self, *, created: bool = True) -> BackupStorage: ...


def names(storage: BackupStorage) -> list[str]:
    """The committed objects' names, as listed."""
    return [info.name for info in storage.list_objects()]


class FakeTime:
    """``monotonic`` and ``sleep`` for a lock: sleeping advances the clock, and may let
    a holder go once enough time has passed."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.release_after: list[tuple[float, ExitStack]] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        for after, holder in list(self.release_after):
            if sum(self.slept) >= after:
                self.release_after.remove((after, holder))
                holder.close()


UNSAFE_NAMES = ["", "a/b.tar", ".hidden.tar", "../x.tar", "..", "nul\x00.tar"]


class StorageContract:
    """The contract tests; a subclass named ``Test...`` runs them against one implementation."""

    # How far an object's modification time may stray from this machine's clock.
    clock_slack: float = 2.0
    # Whether the storage keeps the mark an object was written with (an object store
    # must: its commit order leaves objects that only their mark proves ours).
    keeps_marks: bool = False

    @pytest.fixture
    def make_storage(self) -> StorageFactory:
        raise NotImplementedError("the implementation's test module provides make_storage")

    def leave_dead_writer(
        self, storage: BackupStorage, name: str, claim: str | None = None, data: bytes = b"half"
    ) -> None:
        raise NotImplementedError("the implementation's test module provides leave_dead_writer")

    @pytest.fixture
    def storage(self, make_storage: StorageFactory) -> BackupStorage:
        return make_storage()

    # --- where it is -------------------------------------------------------------------

    def test_has_every_operation_of_the_protocol(self, storage: BackupStorage) -> None:
        for method in (
            "describe",
            "local_path",
            "ensure",
            "exists",
            "list_objects",
            "stat",
            "open_read",
            "begin",
            "claimed",
            "delete",
            "clean_partials",
            "read_record",
            "write_record",
            "lock",
        ):
            assert callable(getattr(storage, method)), method
        upload = storage.begin("x.tar")
        assert upload.name == "x.tar"
        for method in ("write", "flush", "commit", "abort"):
            assert callable(getattr(upload, method)), method
        upload.abort()

    def test_location_and_descriptions(self, storage: BackupStorage) -> None:
        """Every object is described for messages by a text naming it; a local one also
        has the path it lives at."""
        assert isinstance(storage.location, str) and storage.location
        put_object(storage, "a.tar", b"bytes")
        assert "a.tar" in storage.describe("a.tar")
        assert storage.location in storage.describe("a.tar")
        path = storage.local_path("a.tar")
        if path is not None:
            assert path.name == "a.tar"
            assert path.read_bytes() == b"bytes"

    def test_ensure_creates_a_missing_location(self, make_storage: StorageFactory) -> None:
        storage = make_storage(created=False)
        assert storage.exists() is False
        storage.ensure()
        assert storage.exists() is True
        storage.ensure()  # and again: nothing to do
        assert storage.list_objects() == []
        put_object(storage, "a.tar")
        assert names(storage) == ["a.tar"]

    # --- objects and listing -----------------------------------------------------------

    def test_nothing_is_visible_until_commit(self, storage: BackupStorage) -> None:
        upload = storage.begin("a.tar.gz")
        upload.write(b"hello ")
        upload.write(b"world")
        upload.flush()
        assert storage.list_objects() == []
        with pytest.raises(FileNotFoundError):
            storage.stat("a.tar.gz")
        with pytest.raises(FileNotFoundError):
            storage.open_read("a.tar.gz")
        upload.commit()
        assert names(storage) == ["a.tar.gz"]
        assert read_object(storage, "a.tar.gz") == b"hello world"

    def test_list_objects_sorted_with_sizes_and_times(self, storage: BackupStorage) -> None:
        before = time.time()
        for name, size in [("c.tar", 3), ("a.tar", 0), ("b.manifest.json", 70_000)]:
            put_object(storage, name, b"x" * size)
        after = time.time()
        listed = storage.list_objects()
        assert [(info.name, info.size) for info in listed] == [("a.tar", 0), ("b.manifest.json", 70_000), ("c.tar", 3)]
        for info in listed:
            assert before - self.clock_slack <= info.modified <= after + self.clock_slack
            assert storage.stat(info.name) == info

    def test_list_shows_committed_objects_only(self, storage: BackupStorage) -> None:
        """Neither a writer's partial, a dead writer's leftover nor a record is an object."""
        put_object(storage, "kept.tar")
        live = storage.begin("live.tar", claim="live")
        live.write(b"in progress")
        self.leave_dead_writer(storage, "dead.tar", claim="dead")
        storage.write_record(".state.json", b"{}")
        assert names(storage) == ["kept.tar"]
        live.abort()

    def test_stat_of_a_missing_object(self, storage: BackupStorage) -> None:
        with pytest.raises(FileNotFoundError):
            storage.stat("missing.tar")

    def test_large_upload_in_pieces_of_every_kind(self, storage: BackupStorage) -> None:
        """write() takes bytes, bytearrays and memoryviews, writes all of each, and returns its length."""
        pieces: list[bytes | bytearray | memoryview] = [
            os.urandom(1 << 20),
            bytearray(os.urandom(12345)),
            memoryview(os.urandom(3 << 20))[7:],
            b"",
            b"z",
        ]
        upload = storage.begin("big.tar")
        for piece in pieces:
            assert upload.write(piece) == len(piece)
        upload.commit()
        expected = b"".join(bytes(piece) for piece in pieces)
        assert storage.stat("big.tar").size == len(expected)
        assert read_object(storage, "big.tar") == expected

    # --- reading -------------------------------------------------------------------------

    def test_open_read_from_any_offset_and_length(self, storage: BackupStorage) -> None:
        data = bytes(range(256)) * 40
        put_object(storage, "a.tar", data)
        cases = [(0, None), (100, None), (100, 50), (0, 1), (10_000, 100), (len(data), None), (5, 0), (len(data), 9)]
        for offset, length in cases:
            with storage.open_read("a.tar", offset, length) as handle:
                got = handle.read()
            end = None if length is None else offset + length
            assert got == data[offset:end], (offset, length)

    def test_open_read_streams_in_pieces(self, storage: BackupStorage) -> None:
        """Readers take an object a piece at a time, with read(n) or readinto()."""
        data = os.urandom(300_000)
        put_object(storage, "a.tar", data)
        with storage.open_read("a.tar", 1000, 200_000) as handle:
            first = handle.read(4096)
            buffer = bytearray(65536)
            rest = bytearray()
            while count := handle.readinto(buffer):
                rest += buffer[:count]
        assert first + bytes(rest) == data[1000:201_000]

    def test_open_read_of_what_is_not_an_object(self, storage: BackupStorage) -> None:
        with pytest.raises(FileNotFoundError):
            storage.open_read("missing.tar")
        with pytest.raises(FileNotFoundError):
            storage.open_read("a/b.tar")
        pending = storage.begin("pending.tar")
        pending.write(b"not yet")
        with pytest.raises(FileNotFoundError):
            storage.open_read("pending.tar")
        pending.abort()

    # --- writing -----------------------------------------------------------------------

    def test_abort_leaves_nothing(self, storage: BackupStorage) -> None:
        """An aborted write leaves no object and no partial, and frees its key."""
        upload = storage.begin("a_20240101_000000.tar", claim="a_20240101_000000")
        upload.write(b"half")
        upload.abort()
        upload.abort()  # twice is harmless
        assert storage.list_objects() == []
        assert storage.claimed("a_20240101_000000") is False
        assert storage.clean_partials() == []
        put_object(storage, "a_20240101_000000.tar", b"second", claim="a_20240101_000000")
        assert read_object(storage, "a_20240101_000000.tar") == b"second"

    def test_abort_after_commit_does_nothing(self, storage: BackupStorage) -> None:
        upload = storage.begin("a.tar")
        upload.write(b"kept")
        upload.commit()
        upload.abort()
        assert names(storage) == ["a.tar"]
        assert read_object(storage, "a.tar") == b"kept"

    def test_commit_twice_or_after_abort_raises(self, storage: BackupStorage) -> None:
        first = storage.begin("a.tar")
        first.commit()
        with pytest.raises(StorageError):
            first.commit()
        second = storage.begin("b.tar")
        second.abort()
        with pytest.raises(StorageError):
            second.commit()
        assert names(storage) == ["a.tar"]

    def test_write_after_commit_or_abort_is_refused(self, storage: BackupStorage) -> None:
        """A finished upload takes no more bytes, and none of them land anywhere: not in
        its own object, nor in the upload begun after it."""
        first = storage.begin("a.tar")
        first.write(b"a")
        first.commit()
        second = storage.begin("b.tar")
        second.write(b"b")
        second.abort()
        third = storage.begin("c.tar")
        for finished in (first, second):
            with pytest.raises((ValueError, OSError, StorageError)):
                finished.write(b"late")
        third.write(b"c")
        third.commit()
        assert names(storage) == ["a.tar", "c.tar"]
        assert read_object(storage, "a.tar") == b"a"
        assert read_object(storage, "c.tar") == b"c"

    def test_begin_refuses_an_existing_name(self, storage: BackupStorage) -> None:
        put_object(storage, "a.tar", b"old")
        with pytest.raises(FileExistsError):
            storage.begin("a.tar")
        assert read_object(storage, "a.tar") == b"old"

    def test_commit_never_replaces_an_existing_object(self, storage: BackupStorage) -> None:
        """Of two writers racing for one name, the second fails (at its commit, or
        already at its begin where a storage lets one writer write a name at a time),
        changes nothing and leaves no partial behind."""
        first = storage.begin("a.tar", claim="c1")
        try:
            second = storage.begin("a.tar", claim="c2")
        except FileExistsError:
            second = None
        first.write(b"first")
        if second is not None:
            second.write(b"second")
        first.commit()
        if second is not None:
            with pytest.raises(FileExistsError):
                second.commit()
        assert names(storage) == ["a.tar"]
        assert read_object(storage, "a.tar") == b"first"
        assert storage.claimed("c2") is False
        assert storage.clean_partials() == []

    # --- claims ------------------------------------------------------------------------

    def test_a_claim_is_held_by_one_writer_at_a_time(self, storage: BackupStorage) -> None:
        holder = storage.begin("b_1.tar.gz", claim="b_1")
        with pytest.raises(FileExistsError):
            storage.begin("b_1.tar.xz", claim="b_1")
        other = storage.begin("b_1-2.tar.gz", claim="b_1-2")  # a different claim is free
        holder.abort()
        again = storage.begin("b_1.tar.xz", claim="b_1")
        again.commit()
        other.commit()
        assert names(storage) == ["b_1-2.tar.gz", "b_1.tar.xz"]

    def test_without_a_claim_the_name_is_the_key(self, storage: BackupStorage) -> None:
        holder = storage.begin("m.json")
        with pytest.raises(FileExistsError):
            storage.begin("m.json")
        assert storage.claimed("m.json") is True
        holder.commit()
        assert storage.claimed("m.json") is False

    def test_a_claim_is_refused_while_an_object_has_its_prefix(self, storage: BackupStorage) -> None:
        """Refused while a committed object's name starts with claim + "."; names that
        merely start with the claim, without the dot, do not block it."""
        put_object(storage, "b_1.manifest.json")
        with pytest.raises(FileExistsError):
            storage.begin("b_1.tar.gz", claim="b_1")
        assert storage.claimed("b_1") is False  # the refused writer holds nothing
        put_object(storage, "b_2-2.tar")
        put_object(storage, "b_2x.tar")
        put_object(storage, "b_2.tar", claim="b_2")
        assert names(storage) == ["b_1.manifest.json", "b_2-2.tar", "b_2.tar", "b_2x.tar"]

    def test_claimed_follows_the_writer(self, storage: BackupStorage) -> None:
        assert storage.claimed("k") is False
        upload = storage.begin("k.tar", claim="k")
        assert storage.claimed("k") is True
        assert storage.claimed("k.tar") is False  # the claim is the key, not the name
        upload.commit()
        assert storage.claimed("k") is False
        aborted = storage.begin("j.tar", claim="j")
        aborted.abort()
        assert storage.claimed("j") is False

    # --- dead and live writers ---------------------------------------------------------

    def test_clean_partials_spares_a_live_writer(self, storage: BackupStorage) -> None:
        upload = storage.begin("a.tar", claim="a")
        upload.write(b"in progress")
        assert storage.clean_partials() == []
        assert storage.claimed("a") is True
        upload.write(b"!")
        upload.commit()
        assert read_object(storage, "a.tar") == b"in progress!"

    def test_a_dead_writer_holds_its_key_until_cleaned(self, storage: BackupStorage) -> None:
        key = "a_20240101_000000"
        self.leave_dead_writer(storage, key + ".tar", claim=key)
        assert storage.list_objects() == []
        assert storage.claimed(key) is True
        with pytest.raises(FileExistsError):
            storage.begin(key + ".tar", claim=key)
        removed = storage.clean_partials()
        assert len(removed) == 1 and key in removed[0]
        assert storage.clean_partials() == []
        assert storage.claimed(key) is False
        put_object(storage, key + ".tar", b"whole", claim=key)
        assert read_object(storage, key + ".tar") == b"whole"

    def test_clean_partials_removes_only_the_dead(self, storage: BackupStorage) -> None:
        """Dead writers' leftovers go; live writers, objects and records stay."""
        put_object(storage, "kept.tar", b"kept")
        storage.write_record(".state.json", b"{}")
        live = storage.begin("live.tar", claim="live")
        self.leave_dead_writer(storage, "dead-1.tar", claim="dead-1")
        self.leave_dead_writer(storage, "dead-2.manifest.json")
        removed = storage.clean_partials()
        assert len(removed) == 2
        assert any("dead-1" in name for name in removed) and any("dead-2.manifest.json" in name for name in removed)
        assert names(storage) == ["kept.tar"]
        assert storage.read_record(".state.json") == b"{}"
        assert storage.claimed("live") is True
        live.commit()
        assert names(storage) == ["kept.tar", "live.tar"]

    # --- deleting ----------------------------------------------------------------------

    def test_delete(self, storage: BackupStorage) -> None:
        put_object(storage, "a.tar")
        put_object(storage, "b.tar")
        storage.delete("a.tar")
        assert names(storage) == ["b.tar"]
        with pytest.raises(FileNotFoundError):
            storage.delete("a.tar")
        with pytest.raises(FileNotFoundError):
            storage.stat("a.tar")
        put_object(storage, "a.tar", b"again")  # the name is free again
        assert read_object(storage, "a.tar") == b"again"

    # --- records -----------------------------------------------------------------------

    def test_records_are_written_replaced_and_never_listed(self, storage: BackupStorage) -> None:
        assert storage.read_record(".obs-backup-state.json") is None
        storage.write_record(".obs-backup-state.json", b'{"a": 1}')
        assert storage.read_record(".obs-backup-state.json") == b'{"a": 1}'
        storage.write_record(".obs-backup-state.json", b"{}")
        assert storage.read_record(".obs-backup-state.json") == b"{}"
        big = os.urandom(200_000)
        storage.write_record(".other", big)
        assert storage.read_record(".other") == big
        assert storage.list_objects() == []
        assert storage.clean_partials() == []
        assert storage.read_record(".obs-backup-state.json") == b"{}"

    # --- the lock ----------------------------------------------------------------------

    def test_a_held_lock_refuses_another_holder_naming_the_first(self, storage: BackupStorage) -> None:
        fake = FakeTime()
        waiter = storage.lock(0, sleep=fake.sleep, monotonic=fake.monotonic)
        with storage.lock(0), pytest.raises(LockError) as caught, waiter:
            pytest.fail("acquired a held lock")
        assert caught.value.holder_pid == os.getpid()
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message
        assert storage.location in message and "without waiting" in message
        assert "\n" not in message
        assert fake.slept == []
        with storage.lock(0):  # released with its block
            pass

    def test_the_lock_waits_exactly_its_timeout(self, storage: BackupStorage) -> None:
        fake = FakeTime()
        waiter = storage.lock(2.5, sleep=fake.sleep, monotonic=fake.monotonic)
        with storage.lock(), pytest.raises(LockError, match=r"after waiting 2\.5s"), waiter:
            pytest.fail("acquired a held lock")
        waited = sum(fake.slept)
        assert 2.5 <= waited < 2.5 + max(fake.slept) + 1e-9
        assert all(0 < step <= 0.5 for step in fake.slept)  # polls, not one long sleep

    def test_the_lock_is_taken_when_released_within_the_timeout(self, storage: BackupStorage) -> None:
        fake = FakeTime()
        holder = ExitStack()
        holder.enter_context(storage.lock())
        fake.release_after.append((1.0, holder))
        with storage.lock(30, sleep=fake.sleep, monotonic=fake.monotonic):
            waited = sum(fake.slept)
        assert 1.0 <= waited < 1.5

    def test_the_lock_leaves_objects_alone(self, storage: BackupStorage) -> None:
        with storage.lock():
            put_object(storage, "a.tar")
        assert names(storage) == ["a.tar"]
        assert storage.clean_partials() == []

    # --- names -------------------------------------------------------------------------

    @pytest.mark.parametrize("name", UNSAFE_NAMES)
    def test_unsafe_names_are_refused(self, storage: BackupStorage, name: str) -> None:
        """Object names may not be empty, contain '/' or NUL, or start with '.'."""
        with pytest.raises(StorageError):
            storage.begin(name)
        with pytest.raises(StorageError):
            storage.begin("ok.tar", claim=name)
        with pytest.raises(StorageError):
            storage.stat(name)
        with pytest.raises(StorageError):
            storage.delete(name)
        assert storage.claimed("ok.tar") is False
        assert storage.list_objects() == []

    def test_marks_are_kept_with_their_objects_or_not_at_all(self, storage: BackupStorage) -> None:
        """An object written with a mark reads it back (or None where marks are not kept);
        one written without has none; and no object, no mark."""
        for name, mark in (("b_20240101_000000.tar.gz.age", "b_20240101_000000"), ("plain.tar", None)):
            upload = storage.begin(name, claim=mark, mark=mark)
            upload.write(b"x" * 10)
            upload.commit()
            assert storage.marked(name) == (mark if self.keeps_marks else None)
        with pytest.raises(FileNotFoundError):
            storage.marked("absent.tar")
