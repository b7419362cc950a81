"""LocalStorage (a directory) against the contract, plus what only a directory has:
private file modes whatever the umask, the partial files' names and locks, the fsync
and no-replace link of a commit, and files of other kinds (FIFOs, directories,
symlinks) under an object's name, which are not objects."""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import backup.storage.local as local_module
from backup.errors import StorageError
from backup.storage import LOCK_NAME, LocalStorage, ObjectRef, locate, open_storage
from backup.storage.base import BackupStorage
from backup.storage.local import PARTIAL_PREFIX, PARTIAL_SUFFIX, partial_name
from support.storage import MemoryStorage, put_object, read_object

from .contract import StorageContract, StorageFactory


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def make_storage(self, tmp_path: Path) -> StorageFactory:
        numbers = itertools.count()

        def make(*, created: bool = True) -> BackupStorage:
            storage = LocalStorage(tmp_path / f"store{next(numbers)}" / "backups")
            if created:
                storage.ensure()
            return storage

        return make

    def leave_dead_writer(
        self, storage: BackupStorage, name: str, claim: str | None = None, data: bytes = b"half"
    ) -> None:
        # A real dead writer: a child process begins the upload, writes, and is killed
        # with SIGKILL, so the kernel drops its flock and nothing of ours runs after.
        pid = os.fork()
        if pid == 0:
            try:
                upload = storage.begin(name, claim=claim)
                upload.write(data)
                os.kill(os.getpid(), signal.SIGKILL)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    """An existing, empty backup directory."""
    storage = LocalStorage(tmp_path / "store")
    storage.ensure()
    return storage


def listdir(storage: LocalStorage) -> list[str]:
    return sorted(os.listdir(storage.directory))


# --- modes and names --------------------------------------------------------------------


@pytest.fixture(params=[0o000, 0o022, 0o077, 0o777], ids=["umask000", "umask022", "umask077", "umask777"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under a given umask."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_files_are_private_whatever_the_umask(store: LocalStorage, umask: int) -> None:
    """Partials, committed objects and records are mode 0600."""
    upload = store.begin("a.tar", claim="a")
    partial = store.directory / ".obs-backup.a.partial"
    assert stat.S_IMODE(partial.stat().st_mode) == 0o600
    upload.write(b"secret")
    upload.commit()
    assert stat.S_IMODE(store.path("a.tar").stat().st_mode) == 0o600
    store.write_record(".obs-backup-state.json", b"{}")
    assert stat.S_IMODE((store.directory / ".obs-backup-state.json").stat().st_mode) == 0o600
    assert listdir(store) == [".obs-backup-state.json", "a.tar"]


def test_a_new_directory_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    storage = LocalStorage(tmp_path / "made" / "backups")
    storage.ensure()
    assert stat.S_IMODE(storage.directory.stat().st_mode) == 0o700


def test_partial_names(store: LocalStorage) -> None:
    """A writer's file is ``.obs-backup.<claim or name>.partial``; abort removes it."""
    assert partial_name("k") == PARTIAL_PREFIX + "k" + PARTIAL_SUFFIX == ".obs-backup.k.partial"
    claimed = store.begin("a.tar.gz", claim="a")
    assert listdir(store) == [".obs-backup.a.partial"]
    claimed.abort()
    assert listdir(store) == []
    unclaimed = store.begin("m.manifest.json")
    assert listdir(store) == [".obs-backup.m.manifest.json.partial"]
    unclaimed.abort()
    assert listdir(store) == []


def test_claimed_is_the_partial_file(store: LocalStorage) -> None:
    """A key is held while its partial exists, whoever left it there."""
    (store.directory / partial_name("x_20240101_000000")).write_bytes(b"")
    assert store.claimed("x_20240101_000000") is True
    assert store.claimed("x_20240101_000001") is False


# --- commit: fsync, then a link that cannot replace, then the directory --------------------


def test_commit_fsyncs_the_file_then_links_it_then_fsyncs_the_directory(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spies, not faults: the order of these three calls is what makes a commit durable,
    # and nothing below LocalStorage is a seam, so its module's names are wrapped.
    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_fsync_dir = os.fsync, local_module.link_no_replace, local_module.fsync_directory

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def link(source: Path, target: Path) -> None:
        events.append(("link", f"{Path(source).name} -> {Path(target).name}"))
        real_link(source, target)

    def fsync_directory(directory: Path) -> None:
        events.append(("fsync_directory", str(directory)))
        real_fsync_dir(directory)

    monkeypatch.setattr(local_module.os, "fsync", fsync)
    monkeypatch.setattr(local_module, "link_no_replace", link)
    monkeypatch.setattr(local_module, "fsync_directory", fsync_directory)
    upload = store.begin("a.tar", claim="a")
    upload.write(b"data")
    assert events == []  # nothing is forced to disk before the commit
    upload.commit()
    monkeypatch.undo()
    assert events == [
        ("fsync", str(store.directory / ".obs-backup.a.partial")),
        ("link", ".obs-backup.a.partial -> a.tar"),
        ("fsync_directory", str(store.directory)),
        ("fsync", str(store.directory)),  # the directory's own fsync, inside fsync_directory
    ]


def test_the_object_is_the_file_written_under_its_final_name(store: LocalStorage) -> None:
    upload = store.begin("a.tar", claim="a")
    upload.write(b"data")
    inode = (store.directory / ".obs-backup.a.partial").stat().st_ino
    upload.commit()
    assert store.path("a.tar").stat().st_ino == inode
    assert store.path("a.tar").stat().st_nlink == 1
    assert listdir(store) == ["a.tar"]


@pytest.mark.parametrize("kind", ["file", "symlink", "dangling-symlink", "directory", "fifo"])
def test_commit_does_not_replace_what_appeared_under_the_name(store: LocalStorage, kind: str) -> None:
    """Another program's file made under the name after begin stays as it was; the
    commit fails and leaves no partial."""
    upload = store.begin("a.tar", claim="a")
    upload.write(b"ours")
    target = store.path("a.tar")
    if kind == "file":
        target.write_bytes(b"theirs")
    elif kind == "symlink":
        (store.directory / "other").write_bytes(b"theirs")
        target.symlink_to("other")
    elif kind == "dangling-symlink":
        target.symlink_to("nowhere")
    elif kind == "directory":
        target.mkdir()
    else:
        os.mkfifo(target)
    before = os.lstat(target)
    with pytest.raises(FileExistsError):
        upload.commit()
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode, after.st_size) == (before.st_ino, before.st_mode, before.st_size)
    assert not any(name.endswith(PARTIAL_SUFFIX) for name in listdir(store))
    assert store.claimed("a") is False


def test_a_failed_fsync_fails_the_commit_and_leaves_nothing(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root no disk can be made to fail; os.fsync is the one call in the way, and
    # nothing below LocalStorage is a seam, so it is replaced for this one commit.
    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    upload = store.begin("a.tar", claim="a")
    upload.write(b"data")
    monkeypatch.setattr(local_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        upload.commit()
    monkeypatch.undo()
    assert listdir(store) == []
    assert store.claimed("a") is False
    put_object(store, "a.tar", b"again", claim="a")


# --- what is not an object ----------------------------------------------------------------


@pytest.fixture
def odd_entries(store: LocalStorage) -> LocalStorage:
    """A directory with one real object and, under object-like names, a FIFO, a
    directory, a symlink to the object and a dangling symlink."""
    put_object(store, "real.tar.gz", b"real")
    os.mkfifo(store.path("fifo.tar.gz"))
    store.path("dir.tar.gz").mkdir()
    store.path("link.tar.gz").symlink_to("real.tar.gz")
    store.path("dangling.tar.gz").symlink_to("nowhere")
    return store


def test_other_kinds_of_file_are_not_objects(odd_entries: LocalStorage) -> None:
    store = odd_entries
    assert [info.name for info in store.list_objects()] == ["real.tar.gz"]
    for name in ("fifo.tar.gz", "dir.tar.gz", "link.tar.gz", "dangling.tar.gz"):
        with pytest.raises(FileNotFoundError):
            store.stat(name)
        with pytest.raises(FileExistsError):  # the name is taken all the same, never replaced
            store.begin(name)


def test_opening_what_is_not_an_object(odd_entries: LocalStorage) -> None:
    """A FIFO does not hang the reader, a symlink is not followed, a directory says so."""
    store = odd_entries
    outcome: list[OSError | None] = []

    def open_fifo() -> None:
        try:
            store.open_read("fifo.tar.gz")
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=open_fifo, daemon=True)
    reader.start()
    reader.join(5)
    assert len(outcome) == 1, "opening a FIFO hung"
    assert isinstance(outcome[0], FileNotFoundError)
    with pytest.raises(IsADirectoryError):
        store.open_read("dir.tar.gz")
    for name in ("link.tar.gz", "dangling.tar.gz"):
        with pytest.raises(FileNotFoundError):
            store.open_read(name)
    assert read_object(store, "real.tar.gz") == b"real"


# --- clean_partials -----------------------------------------------------------------------


def test_clean_partials_removes_only_dead_partials_of_our_naming(store: LocalStorage) -> None:
    """Unlocked regular files named ``.obs-backup.*.partial`` go; another program's hidden
    files (and an old-style ``.<id>.partial``, no longer ours), a directory or a FIFO
    under one of our names, and a partial a live writer holds, all stay."""
    dead = [".obs-backup.b_20240101_000000.partial", ".obs-backup.m.manifest.json.partial", ".obs-backup.x.9.partial"]
    theirs = [
        ".download.partial",
        ".b_20240101_000000.partial",
        ".notes",
        ".obs-backup.partial",
        "obs-backup.x.partial",
    ]
    for name in dead + theirs:
        (store.directory / name).write_bytes(b"half of something")
    (store.directory / ".obs-backup.dir.partial").mkdir()
    os.mkfifo(store.directory / ".obs-backup.fifo.partial")
    live = store.begin("live.tar", claim="live")
    put_object(store, "kept.tar")

    assert store.clean_partials() == sorted(dead)

    assert listdir(store) == sorted(
        [*theirs, ".obs-backup.dir.partial", ".obs-backup.fifo.partial", ".obs-backup.live.partial", "kept.tar"]
    )
    live.commit()
    assert listdir(store) == sorted(
        [*theirs, ".obs-backup.dir.partial", ".obs-backup.fifo.partial", "kept.tar", "live.tar"]
    )


def test_clean_partials_spares_a_partial_another_open_file_locks(store: LocalStorage) -> None:
    """The flock, not the process, tells a live writer: one held by any open file counts."""
    path = store.directory / partial_name("b_20240101_000000")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert store.clean_partials() == []
        assert path.exists()
    finally:
        os.close(fd)
    assert store.clean_partials() == [path.name]


def test_a_cleaner_between_a_writers_create_and_its_lock_spares_it(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interleaving, which two processes can reach by chance, is pinned here by
    # running the cleaner inside begin's flock call; nothing but fcntl sits between
    # the two, so that is where the test steps in.
    real_flock = fcntl.flock
    armed = [True]

    def flock(fd: int, operation: int) -> None:
        if armed[0]:
            armed[0] = False
            store.clean_partials()
        real_flock(fd, operation)

    monkeypatch.setattr(local_module.fcntl, "flock", flock)
    upload = store.begin("b_1.tar.gz", claim="b_1")
    monkeypatch.undo()
    upload.write(b"ours")
    assert store.claimed("b_1") is True
    with pytest.raises(FileExistsError):
        store.begin("b_1.tar.gz", claim="b_1")
    upload.commit()
    assert read_object(store, "b_1.tar.gz") == b"ours"


# --- the directory itself -----------------------------------------------------------------


def test_a_missing_directory_holds_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "absent")
    assert storage.exists() is False
    assert storage.list_objects() == []
    assert storage.clean_partials() == []
    assert storage.read_record(".obs-backup-state.json") is None
    assert not (tmp_path / "absent").exists()


def test_a_file_in_place_of_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"")
    storage = LocalStorage(path)
    assert storage.exists() is False
    with pytest.raises(StorageError) as caught:
        storage.list_objects()
    assert caught.value.path == str(path)
    with pytest.raises(StorageError, match="not a directory"):
        storage.ensure()


def test_records_are_replaced_atomically(store: LocalStorage) -> None:
    """A record is replaced by a new file: a reader of the old one keeps its bytes, and
    no temporary file is left."""
    store.write_record(".obs-backup-state.json", b"old")
    path = store.directory / ".obs-backup-state.json"
    inode = path.stat().st_ino
    with open(path, "rb") as reader:
        store.write_record(".obs-backup-state.json", b"new")
        assert reader.read() == b"old"
    assert path.stat().st_ino != inode
    assert store.read_record(".obs-backup-state.json") == b"new"
    assert listdir(store) == [".obs-backup-state.json"]


def test_the_lock_file_names_its_holder_and_is_not_an_object(store: LocalStorage) -> None:
    with store.lock():
        holder = json.loads((store.directory / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
    assert LOCK_NAME == ".obs-backup.lock"
    assert store.list_objects() == []
    assert store.clean_partials() == []
    assert listdir(store) == [LOCK_NAME]


def test_where_an_object_is(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "b")
    assert storage.location == str(tmp_path / "b")
    assert storage.describe("a.tar") == str(tmp_path / "b" / "a.tar")
    assert storage.local_path("a.tar") == tmp_path / "b" / "a.tar"
    assert repr(storage) == f"LocalStorage({str(tmp_path / 'b')!r})"


# --- naming a location, locating an archive -----------------------------------------------


def test_open_storage_turns_a_directory_into_local_storage(tmp_path: Path) -> None:
    for given in (tmp_path / "b", str(tmp_path / "b")):
        storage = open_storage(given)
        assert isinstance(storage, LocalStorage) and storage.directory == tmp_path / "b"
    memory = MemoryStorage()
    assert open_storage(memory) is memory


def test_locate_an_archive_by_its_path(tmp_path: Path) -> None:
    archive = tmp_path / "b" / "x_20240101_000000.tar.gz"
    ref = locate(archive)
    assert isinstance(ref.storage, LocalStorage) and ref.storage.directory == tmp_path / "b"
    assert (ref.name, ref.label, ref.path) == (archive.name, str(archive), archive)
    assert locate(ref) is ref
    sibling = ref.sibling("x_20240101_000000.manifest.json")
    assert sibling.label == str(tmp_path / "b" / "x_20240101_000000.manifest.json")
    relative = locate("b/x.tar")
    assert (relative.label, relative.sibling("x.manifest.json").label) == ("b/x.tar", "b/x.manifest.json")
    assert isinstance(relative, ObjectRef)


def test_a_record_that_cannot_be_read_is_an_error_not_an_empty_record(tmp_path: Path) -> None:
    """A directory where the state file should be: reading it fails, naming it, instead of
    reading as "no runs yet" and being written over by the next run's state."""
    storage = LocalStorage(tmp_path)
    (tmp_path / ".obs-backup-state.json").mkdir()
    with pytest.raises(StorageError, match=r"\.obs-backup-state\.json: cannot read: Is a directory"):
        storage.read_record(".obs-backup-state.json")
    assert storage.read_record(".missing") is None


# --- edges the mutation run found unpinned --------------------------------------------------


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_writer_that_loses_its_claim_to_a_cleaner_every_time_gives_up_after_five_tries(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each try creates the partial, locks it and finds it was removed meanwhile (forced
    here: ``_is_still`` removes it and answers no); after five, begin says the claim could not be had,
    and no descriptor is left open."""
    tries = []

    def removed_meanwhile(path: Path, fd: int) -> bool:
        tries.append(fd)
        path.unlink()  # the cleaner's doing
        return False

    monkeypatch.setattr(local_module, "_is_still", removed_meanwhile)
    before = open_fds()
    with pytest.raises(FileExistsError, match=r"\.obs-backup\.a\.partial: could not be claimed$"):
        store.begin("a.tar", claim="a")
    assert len(tries) == 5
    assert open_fds() == before


def test_a_lock_that_fails_in_begin_is_raised_and_closes_its_descriptor(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flock(fd: int, operation: int) -> None:
        raise OSError(37, "No locks available")

    monkeypatch.setattr(local_module.fcntl, "flock", flock)
    before = open_fds()
    with pytest.raises(OSError, match="No locks available"):
        store.begin("a.tar")
    assert open_fds() == before


def test_a_begin_refused_as_taken_closes_its_descriptor_and_removes_its_partial(store: LocalStorage) -> None:
    put_object(store, "a.tar", b"theirs")
    before = open_fds()
    with pytest.raises(FileExistsError):
        store.begin("a.tar")
    assert open_fds() == before
    assert listdir(store) == ["a.tar"]


def test_a_write_that_makes_no_progress_fails_instead_of_spinning(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.write returning 0 (no error, no byte) would loop forever; it is an I/O error.
    (As root no device can be made to do it: os.write is replaced for this one write.)"""
    upload = store.begin("a.tar")
    monkeypatch.setattr(local_module.os, "write", lambda fd, data: 0)
    with pytest.raises(OSError) as caught:
        upload.write(b"data")
    monkeypatch.undo()
    assert (caught.value.errno, caught.value.strerror) == (errno.EIO, "write made no progress")
    assert caught.value.filename == str(store.directory / partial_name("a.tar"))
    upload.abort()


def test_a_commit_whose_directory_fsync_fails_unlinks_what_it_linked(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linked but not durable is not committed: the object is removed again, with the
    partial, and the error raised. (The directory's fsync is replaced: no disk fails on
    demand.)"""

    def failing(directory: Path) -> None:
        raise OSError(5, "Input/output error")

    upload = store.begin("a.tar", claim="a")
    upload.write(b"data")
    monkeypatch.setattr(local_module, "fsync_directory", failing)
    with pytest.raises(OSError, match="Input/output error"):
        upload.commit()
    assert listdir(store) == []


def test_uploads_and_ranged_reads_are_the_files_io_takes_them_for(store: LocalStorage) -> None:
    """io's buffered wrappers ask whether a file is writable or readable: an upload and
    a ranged read must say yes."""
    import io

    upload = store.begin("a.tar")
    assert upload.writable() is True
    with io.BufferedWriter(upload) as buffered:  # type: ignore[arg-type]
        buffered.write(b"0123456789")
        buffered.flush()
        upload.commit()
    ranged = store.open_read("a.tar", 2, 5)
    assert ranged.readable() is True
    assert io.BufferedReader(ranged).read() == b"23456"  # type: ignore[arg-type]


def test_a_ranged_read_reads_its_range_and_no_more(store: LocalStorage) -> None:
    put_object(store, "a.tar", b"0123456789")
    with store.open_read("a.tar", 3, 4) as ranged:
        assert ranged.read(0) == b""  # as a file reads nothing when asked for nothing
        assert ranged.read() == b"3456"
        assert ranged.read() == b""
    with store.open_read("a.tar", 3, 4) as ranged:
        assert ranged.read(3) == b"345"
        assert ranged.read(3) == b"6"


def test_closing_a_ranged_read_closes_its_file(store: LocalStorage) -> None:
    put_object(store, "a.tar", b"0123456789")
    before = open_fds()
    with store.open_read("a.tar", 0, 4) as ranged:
        ranged.read()
    assert open_fds() == before
    ranged = store.open_read("a.tar", 0, 4)
    assert ranged.closed is False
    ranged.close()
    assert ranged.closed is True
    assert open_fds() == before


def test_opening_a_directory_or_fifo_closes_what_it_opened(odd_entries: LocalStorage) -> None:
    before = open_fds()
    with pytest.raises(IsADirectoryError) as caught:
        odd_entries.open_read("dir.tar.gz")
    assert caught.value.errno == errno.EISDIR
    with pytest.raises(FileNotFoundError):
        odd_entries.open_read("fifo.tar.gz")
    assert open_fds() == before


def test_what_is_not_an_object_is_not_found_with_enoent(odd_entries: LocalStorage) -> None:
    """Callers tell "not there" by errno, as with any file: a FIFO, a symlink, a path
    with a '/' and an empty name are all ENOENT, never opened."""
    (odd_entries.directory / "sub").mkdir()
    (odd_entries.directory / "sub" / "inner.tar").write_bytes(b"not an object of this directory")
    for name in ("fifo.tar.gz", "link.tar.gz", "sub/inner.tar", ""):
        with pytest.raises(FileNotFoundError) as caught:
            odd_entries.open_read(name)
        assert caught.value.errno == errno.ENOENT, name
    for name in ("fifo.tar.gz", "dir.tar.gz", "link.tar.gz"):
        with pytest.raises(FileNotFoundError) as caught:
            odd_entries.stat(name)
        assert caught.value.errno == errno.ENOENT, name


def test_clean_partials_spares_a_partial_replaced_since_it_was_opened(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the cleaner's open and its lock, a new writer may have put its own partial
    under the name; the lock then holds the old file, and the new one is not removed.
    (Forced: ``_is_still`` answers no, as it does when the name is another file now.)"""
    dead = store.directory / partial_name("a")
    dead.write_bytes(b"half")
    monkeypatch.setattr(local_module, "_is_still", lambda path, fd: False)
    assert store.clean_partials() == []
    assert dead.exists()
    monkeypatch.undo()
    assert store.clean_partials() == [partial_name("a")]


@pytest.mark.parametrize("name", ["plain", ".a/b", ".", "..", ".a\x00b"])
def test_a_record_name_is_a_hidden_file_of_the_directory_itself(store: LocalStorage, name: str) -> None:
    with pytest.raises(StorageError, match=r"a record's name starts with '\.' and has no '/'"):
        store.write_record(name, b"{}")
    assert listdir(store) == []


def test_two_storages_of_one_directory_are_equal(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path / "a") == LocalStorage(tmp_path / "a")
    assert hash(LocalStorage(tmp_path / "a")) == hash(LocalStorage(tmp_path / "a"))
    assert LocalStorage(tmp_path / "a") != LocalStorage(tmp_path / "b")
    assert LocalStorage(tmp_path / "a") != str(tmp_path / "a")


def test_errors_of_the_directory_give_the_systems_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(The failures are injected: as root, no permission bit makes them.)"""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    storage = LocalStorage(tmp_path / "b")
    monkeypatch.setattr(local_module, "make_private_dir", refuse)
    with pytest.raises(StorageError) as caught:
        storage.ensure()
    assert str(caught.value) == f"{storage.directory}: cannot create backup directory: Permission denied"
    monkeypatch.setattr(local_module.os, "listdir", refuse)
    with pytest.raises(StorageError) as caught:
        storage.list_objects()
    assert str(caught.value) == f"{storage.directory}: cannot list backup directory: Permission denied"
