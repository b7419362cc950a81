"""``S3Storage`` against the contract, on two real S3 servers started on 127.0.0.1:
moto (fast, in this process) and SeaweedFS (a distributed object store, which checks
checksums and conditional writes as AWS does). Then what only an object store has:
multipart uploads, their clean-up, prefixes shared in one bucket, a store that ignores
conditions, and the size and checksum read back after each upload.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from backup.errors import LockError, StorageError
from backup.locations import S3Location
from backup.storage.base import BackupStorage
from backup.storage.s3 import MAX_PARTS, MIN_PART_SIZE, S3Storage, part_size_for
from support.s3servers import S3Server
from support.storage import put_object, read_object

from .contract import StorageContract, StorageFactory, names

LEASE = 2.0  # long enough that a loaded machine renews a live claim in time
PART = 5 << 20  # the smallest part S3 allows


def make_s3(server: S3Server, bucket: str, prefix: str = "host-a/backups", **options: Any) -> S3Storage:
    settings: dict[str, Any] = {"lease_seconds": LEASE, "grace_seconds": 0.0}
    settings.update(options)
    client = options.pop("client", None) or server.client()
    settings.pop("client", None)
    return S3Storage(S3Location(bucket, prefix), client=client, **settings)


def wait_until_stale(storage: S3Storage) -> None:
    """Sleep past the lease: the server's Date header has one-second resolution."""
    time.sleep(storage.lease_seconds + 1.5)


class _S3Contract(StorageContract):
    keeps_marks = True

    clock_slack = 5.0
    server_fixture = ""

    @pytest.fixture
    def make_storage(self, request: pytest.FixtureRequest) -> StorageFactory:
        server: S3Server = request.getfixturevalue(self.server_fixture)

        def make(*, created: bool = True) -> BackupStorage:
            bucket = server.make_bucket() if created else f"t-missing-{os.urandom(6).hex()}"
            return make_s3(server, bucket)

        return make

    def leave_dead_writer(
        self, storage: BackupStorage, name: str, claim: str | None = None, data: bytes = b"half"
    ) -> None:
        assert isinstance(storage, S3Storage)
        upload = storage.begin(name, claim=claim)
        upload.write(data)
        upload.abandon()
        wait_until_stale(storage)


class TestS3StorageOnMoto(_S3Contract):
    server_fixture = "moto_server"


class TestS3StorageOnSeaweedFS(_S3Contract):
    server_fixture = "seaweedfs_server"


@pytest.fixture(params=["moto", "seaweedfs"])
def any_bucket(request: pytest.FixtureRequest) -> tuple[S3Server, str]:
    bucket: tuple[S3Server, str] = request.getfixturevalue(f"{request.param}_bucket")
    return bucket


def _uploads(server: S3Server, bucket: str) -> list[str]:
    return [u["Key"] for u in server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _keys(server: S3Server, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in server.client().list_objects_v2(Bucket=bucket).get("Contents", []))


# --- parts -------------------------------------------------------------------------------


def test_parts_are_sized_so_a_terabyte_fits() -> None:
    """At least 8 MiB, whole MiB, equal; the estimate fits in 9,000 of the 10,000 parts."""
    assert part_size_for(None) == part_size_for(0) == MIN_PART_SIZE
    assert part_size_for(10 << 30) == MIN_PART_SIZE  # 10 GiB: 1,280 parts of 8 MiB
    terabyte = 10**12
    size = part_size_for(terabyte)
    assert size % (1 << 20) == 0
    assert terabyte / size <= 9000 < MAX_PARTS
    assert part_size_for(terabyte * 4) * MAX_PARTS > terabyte * 4


def test_a_large_object_goes_up_in_equal_parts_each_with_its_checksum(any_bucket: tuple[S3Server, str]) -> None:
    server, bucket = any_bucket
    client = server.client()
    sent: list[tuple[int, int, str]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        sent.append((params["PartNumber"], len(params["Body"]), params["ChecksumSHA256"]))

    client.meta.events.register("before-parameter-build.s3.UploadPart", record)
    storage = make_s3(server, bucket, client=client, part_size=PART)
    data = os.urandom(2 * PART + 12345)
    upload = storage.begin("big.tar.gz", claim="big")
    for offset in range(0, len(data), 1 << 20):
        upload.write(data[offset : offset + (1 << 20)])
    assert names(storage) == []  # nothing visible before the commit
    upload.commit()
    assert [(number, size) for number, size, _ in sorted(sent)] == [(1, PART), (2, PART), (3, 12345)]
    assert all(checksum for _, _, checksum in sent)
    assert read_object(storage, "big.tar.gz") == data
    assert _uploads(server, bucket) == []
    assert storage.claimed("big") is False
    with storage.open_read("big.tar.gz", PART - 10, 20) as handle:  # a range across a part boundary
        assert handle.read() == data[PART - 10 : PART + 10]


def test_a_failed_upload_leaves_no_parts_and_no_claim(any_bucket: tuple[S3Server, str]) -> None:
    server, bucket = any_bucket
    storage = make_s3(server, bucket, part_size=PART)
    upload = storage.begin("big.tar", claim="big")
    upload.write(os.urandom(PART + 10))
    assert len(_uploads(server, bucket)) == 1
    upload.abort()
    assert _uploads(server, bucket) == []
    assert storage.claimed("big") is False
    assert _keys(server, bucket) == []


def test_a_dead_writers_parts_are_aborted_once_its_claim_is_stale(any_bucket: tuple[S3Server, str]) -> None:
    server, bucket = any_bucket
    storage = make_s3(server, bucket, part_size=PART)
    live = storage.begin("live.tar", claim="live")
    live.write(os.urandom(PART + 1))
    dead = storage.begin("dead.tar", claim="dead")
    dead.write(os.urandom(PART + 1))
    dead.abandon()
    assert storage.clean_partials() == []  # not stale yet
    wait_until_stale(storage)
    removed = storage.clean_partials()
    assert removed == [".obs-backup.dead.claim"]
    assert _uploads(server, bucket) == [storage.s3.key("live.tar")]
    live.commit()
    assert names(storage) == ["live.tar"]
    assert _uploads(server, bucket) == []


def test_an_upload_started_before_its_claim_named_it_is_aborted(any_bucket: tuple[S3Server, str]) -> None:
    """A writer killed between starting its upload and recording it in its claim: the
    stale claim names the object, and the upload of that name goes with it."""
    server, bucket = any_bucket
    storage = make_s3(server, bucket)
    upload = storage.begin("orphan.tar.zst", claim="orphan")
    server.client().create_multipart_upload(Bucket=bucket, Key=storage.s3.key("orphan.tar.zst"))
    upload.abandon()
    wait_until_stale(storage)
    removed = storage.clean_partials()
    assert removed[0] == ".obs-backup.orphan.claim" and removed[1].startswith("orphan.tar.zst (upload ")
    assert _uploads(server, bucket) == []


def test_uploads_no_claim_of_ours_names_are_left_alone(any_bucket: tuple[S3Server, str]) -> None:
    """Another program's multipart upload under the prefix, however old, is not ours."""
    server, bucket = any_bucket
    storage = make_s3(server, bucket)
    server.client().create_multipart_upload(Bucket=bucket, Key=storage.s3.key("their-video.mp4"))
    dead = storage.begin("dead.tar", claim="dead")
    dead.abandon()
    wait_until_stale(storage)
    assert storage.clean_partials() == [".obs-backup.dead.claim"]
    assert _uploads(server, bucket) == [storage.s3.key("their-video.mp4")]


def test_staleness_is_judged_by_the_writers_lease_too(moto_bucket: tuple[S3Server, str]) -> None:
    """A writer with a long lease, and a cleaner whose own lease is short: the claim
    lives as long as its writer said it would."""
    server, bucket = moto_bucket
    writer = make_s3(server, bucket, lease_seconds=30.0)
    cleaner = make_s3(server, bucket, lease_seconds=1.0)
    upload = writer.begin("slow.tar", claim="slow")
    for claim in upload.claims:
        claim.abandon()  # silent, but within its 30 s
    time.sleep(2.5)
    assert cleaner.clean_partials() == []
    assert cleaner.claimed("slow") is True
    with pytest.raises(LockError), cleaner.lock(0), writer.lock(0):
        pass  # the same for the lock: not taken over before the holder's own lease
    upload.abort()


# --- prefixes ----------------------------------------------------------------------------


def test_one_prefix_never_sees_or_touches_another(any_bucket: tuple[S3Server, str]) -> None:
    """Hosts share a bucket under their own prefixes: listing, cleaning and deleting in
    one leaves every other key alone, including keys below it and beside it."""
    server, bucket = any_bucket
    client = server.client()
    for key in ("host-a/backups-old/x.tar", "host-a/backups/nested/y.tar", "host-ab/z.tar", "top.tar"):
        client.put_object(Bucket=bucket, Key=key, Body=b"theirs")
    storage = make_s3(server, bucket)
    put_object(storage, "mine.tar", b"mine")
    assert names(storage) == ["mine.tar"]
    with pytest.raises(FileNotFoundError):
        storage.stat("nested")
    storage.clean_partials()
    storage.delete("mine.tar")
    assert _keys(server, bucket) == [
        "host-a/backups-old/x.tar",
        "host-a/backups/nested/y.tar",
        "host-ab/z.tar",
        "top.tar",
    ]


def test_a_bucket_root_is_a_location_too(moto_bucket: tuple[S3Server, str]) -> None:
    server, bucket = moto_bucket
    storage = make_s3(server, bucket, prefix="")
    put_object(storage, "a.tar", b"root")
    assert storage.describe("a.tar") == f"s3://{bucket}/a.tar"
    assert _keys(server, bucket) == ["a.tar"]


# --- what the store says it holds --------------------------------------------------------


def test_a_store_that_ignores_conditional_writes_is_refused(any_bucket: tuple[S3Server, str]) -> None:
    """Claims and the lock rest on If-None-Match and If-Match: a store that drops them
    (simulated by removing the header before the request is signed) is named and refused,
    before anything is written."""
    server, bucket = any_bucket
    client = server.client()

    def drop_condition(request: Any, **_: Any) -> None:
        if "If-None-Match" in request.headers:
            del request.headers["If-None-Match"]

    client.meta.events.register("before-sign.s3.PutObject", drop_condition)
    storage = make_s3(server, bucket, client=client)
    with pytest.raises(StorageError, match="does not honour If-None-Match"):
        storage.ensure()
    with pytest.raises(StorageError, match="does not honour"), storage.lock():
        pytest.fail("locked a store that cannot lock")
    assert _keys(server, bucket) == []


def test_what_the_store_holds_is_read_back_and_a_difference_discards_it(moto_bucket: tuple[S3Server, str]) -> None:
    """After the upload completes, the object's size is compared with what was sent: a
    store that lost bytes (simulated: one more byte counted as sent) fails the commit,
    and the object is removed."""
    server, bucket = moto_bucket
    storage = make_s3(server, bucket)
    upload = storage.begin("a.tar")
    upload.write(b"12345")
    upload._written += 1
    with pytest.raises(StorageError, match="holds 5 bytes, 6 were sent"):
        upload.commit()
    assert names(storage) == []
    assert storage.claimed("a.tar") is False


def test_a_read_resumes_where_the_connection_broke(moto_bucket: tuple[S3Server, str]) -> None:
    """A connection lost mid-read (simulated: the body raises after 100 KB, twice) is
    resumed with a ranged request for the rest; the bytes come out whole and in order."""
    server, bucket = moto_bucket
    storage = make_s3(server, bucket)
    data = os.urandom(1 << 20)
    put_object(storage, "a.tar", data)
    from urllib3.exceptions import ProtocolError

    real_call = storage._call
    breaks = [2]

    class Breaking:
        def __init__(self, body: Any) -> None:
            self.body, self.given = body, 0

        def read(self, size: int) -> bytes:
            if breaks[0] and self.given >= 100_000:
                breaks[0] -= 1
                raise ProtocolError("Connection broken: IncompleteRead")
            chunk: bytes = self.body.read(min(size, 50_000))
            self.given += len(chunk)
            return chunk

        def close(self) -> None:
            self.body.close()

    def call(operation: str, name: str | None = None, **params: Any) -> dict[str, Any]:
        response = real_call(operation, name, **params)
        if operation == "get_object" and "Range" in params:
            response["Body"] = Breaking(response["Body"])
        return response

    storage._call = call  # type: ignore[method-assign]
    with storage.open_read("a.tar") as handle:
        got = handle.read()
    assert breaks == [0]
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_read_of_an_object_replaced_meanwhile_fails(moto_bucket: tuple[S3Server, str]) -> None:
    server, bucket = moto_bucket
    storage = make_s3(server, bucket)
    put_object(storage, "a.tar", b"old" * 1000)
    handle = storage.open_read("a.tar")
    server.client().put_object(Bucket=bucket, Key=storage.s3.key("a.tar"), Body=b"new" * 1000)
    with pytest.raises(StorageError, match="changed while it was read"):
        handle.read()


def test_errors_name_the_object_and_say_what_happened(moto_bucket: tuple[S3Server, str]) -> None:
    server, bucket = moto_bucket
    missing = make_s3(server, "t-no-such-bucket-here")
    with pytest.raises(StorageError, match=r"^s3://t-no-such-bucket-here/host-a/backups: no such bucket"):
        missing.list_objects()
    assert missing.exists() is False
    storage = make_s3(server, bucket)
    with pytest.raises(FileNotFoundError) as caught:
        storage.stat("gone.tar")
    assert caught.value.filename == f"s3://{bucket}/host-a/backups/gone.tar"


def test_now_is_the_stores_clock(seaweedfs_bucket: tuple[S3Server, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Staleness and grace are judged by the server's clock: a local clock a day fast
    changes nothing. (SeaweedFS: moto, in this process, would read the patched clock too.)"""
    server, bucket = seaweedfs_bucket
    storage = make_s3(server, bucket)
    put_object(storage, "a.tar")
    real = time.time()
    server_now = storage.now()
    assert abs(server_now - real) < 5
    skewed: Callable[[], float] = lambda: real + 86_400  # noqa: E731
    monkeypatch.setattr(time, "time", skewed)
    storage.list_objects()  # a response: the offset is measured again
    assert abs(storage.now() - server_now) < 5


# --- renewals that fail -------------------------------------------------------------------


def _failing_renewals(storage: S3Storage, hidden: str) -> list[str]:
    """Make every write of ``hidden`` (a claim, the lock) fail as a store in trouble
    does (a 500 after the client's retries); return the log of refused writes."""
    refused: list[str] = []
    real_put = storage._put

    def put(key: str, data: bytes, **options: Any) -> str:
        if key.endswith(hidden) and (options.get("if_match") is not None):
            refused.append(key)
            raise StorageError(f"{key}: put_object failed: InternalError: We encountered an internal error")
        return real_put(key, data, **options)

    storage._put = put  # type: ignore[method-assign]
    return refused


def test_a_writer_that_cannot_renew_its_claim_for_a_lease_does_not_commit(moto_bucket: tuple[S3Server, str]) -> None:
    """Renewals keep failing (the store errs): the writer keeps trying, and once a whole
    lease has passed without one, a clean-up may have taken its claim for a dead
    writer's, so it commits nothing."""
    server, bucket = moto_bucket
    storage = make_s3(server, bucket)
    upload = storage.begin("a.tar", claim="a")
    refused = _failing_renewals(storage, ".obs-backup.a.claim")
    upload.write(b"data")
    time.sleep(storage.lease_seconds + 1.0)
    assert len(refused) >= 3  # it kept trying: the failure did not end its renewals
    with pytest.raises(StorageError, match="its claim could not be renewed for 2s"):
        upload.commit()
    assert names(storage) == []


def test_a_holder_that_cannot_renew_its_lease_for_a_lease_stops_writing(moto_bucket: tuple[S3Server, str]) -> None:
    server, bucket = moto_bucket
    storage = make_s3(server, bucket)
    put_object(storage, "kept.tar")
    with storage.lock():
        refused = _failing_renewals(storage, ".obs-backup.lock")
        time.sleep(storage.lease_seconds + 1.0)
        assert len(refused) >= 3
        with pytest.raises(StorageError, match="lease could not be renewed for 2s"):
            storage.delete("kept.tar")
        with pytest.raises(StorageError, match="lease could not be renewed"):
            storage.begin("new.tar")
    assert names(storage) == ["kept.tar"]


def test_a_writer_stopped_for_a_lease_commits_nothing(moto_bucket: tuple[S3Server, str]) -> None:
    """The process was stopped (SIGSTOP, a suspended VM) longer than its lease: its
    claims may have been cleaned up meanwhile, so it commits nothing, even before any
    renewal has had the chance to notice."""
    server, bucket = moto_bucket
    storage = make_s3(server, bucket)
    upload = storage.begin("a.tar", claim="a")
    upload.write(b"data")
    for claim in upload.claims:
        claim._stop.set()  # the renewals stop with the process
    time.sleep(storage.lease_seconds + 0.5)
    with pytest.raises(StorageError, match="was not renewed for 2s"):
        upload.commit()
    assert names(storage) == []


def _answer_lost(storage: S3Storage, operation: str, raised: type[OSError]) -> list[str]:
    """Make ``operation`` land on the server but report ``raised``, as a client does
    whose first attempt landed, whose answer was lost, and whose retry was refused."""
    real_call = storage._call
    lost: list[str] = []

    def call(op: str, name: str | None = None, **params: Any) -> dict[str, Any]:
        response = real_call(op, name, **params)
        if op == operation and ("IfNoneMatch" in params) and not lost:
            lost.append(str(name))
            raise raised(17, "condition failed (PreconditionFailed)", name)
        return response

    storage._call = call  # type: ignore[method-assign]
    return lost


@pytest.mark.parametrize(
    ("operation", "raised", "size"),
    [("put_object", FileExistsError, 100), ("complete_multipart_upload", FileNotFoundError, PART + 1)],
)
def test_a_commit_whose_answer_was_lost_is_still_a_commit(
    moto_bucket: tuple[S3Server, str], operation: str, raised: type[OSError], size: int
) -> None:
    server, bucket = moto_bucket
    storage = make_s3(server, bucket, part_size=PART)
    data = os.urandom(size)
    upload = storage.begin("a.tar", claim="a")
    upload.write(data)
    lost = _answer_lost(storage, operation, raised)
    upload.commit()
    assert lost == ["a.tar"]
    assert read_object(storage, "a.tar") == data


def test_a_lock_whose_answer_was_lost_is_still_taken(moto_bucket: tuple[S3Server, str]) -> None:
    server, bucket = moto_bucket
    storage = make_s3(server, bucket)
    storage.check_conditional_writes()
    lost = _answer_lost(storage, "put_object", FileExistsError)
    with storage.lock(0):
        assert lost == [".obs-backup.lock"]
        put_object(storage, "a.tar")
    assert names(storage) == ["a.tar"]


def test_a_store_that_ignores_range_is_not_believed(moto_bucket: tuple[S3Server, str]) -> None:
    """Sent the whole object for a ranged read (simulated: no Content-Range), the read
    fails instead of taking the object's first bytes for the ones asked for."""
    server, bucket = moto_bucket
    storage = make_s3(server, bucket)
    put_object(storage, "a.tar", bytes(range(256)) * 10)
    real_call = storage._call

    def call(op: str, name: str | None = None, **params: Any) -> dict[str, Any]:
        response = real_call(op, name, **params)
        if op == "get_object" and "Range" in params:
            response.pop("ContentRange", None)
        return response

    storage._call = call  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="asked for bytes from 100, the object store sent the whole object"):
        storage.open_read("a.tar", 100, 10).read()


def test_a_record_that_cannot_be_read_is_an_error_not_an_empty_record(moto_bucket: tuple[S3Server, str]) -> None:
    """Else the next run's state would be written over everything the record held."""
    server, bucket = moto_bucket
    storage = make_s3(server, bucket)
    storage.write_record(".obs-backup-state.json", b'{"runs": 1}')
    real_call = storage._call

    def call(op: str, name: str | None = None, **params: Any) -> dict[str, Any]:
        if op == "get_object":
            raise StorageError(f"{name}: get_object failed: InternalError")
        return real_call(op, name, **params)

    storage._call = call  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="InternalError"):
        storage.read_record(".obs-backup-state.json")
    storage._call = real_call  # type: ignore[method-assign]
    assert storage.read_record(".obs-backup-state.json") == b'{"runs": 1}'
    assert storage.read_record(".missing") is None


def test_a_store_that_does_not_implement_conditional_writes_is_refused(moto_bucket: tuple[S3Server, str]) -> None:
    """A store answering 501 NotImplemented to a conditional header (simulated at the
    storage's one call site) is refused like one that ignores it, and no probe is left."""
    server, bucket = moto_bucket
    storage = make_s3(server, bucket)
    real_put = storage._put

    def put(key: str, data: bytes, **options: Any) -> str:
        if options.get("if_none_match"):
            raise StorageError(f"{key}: put_object failed: NotImplemented: A header you provided is not implemented")
        return real_put(key, data, **options)

    storage._put = put  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="does not honour conditional writes"):
        storage.ensure()
    assert _keys(server, bucket) == []
