"""What only a real object store can show, on SeaweedFS (moto accepts wrong checksums
and only partly honours conditions): the server rejecting data whose checksum is
wrong, exactly one winner among concurrent conditional creates, the lock's lease taken
over from a holder that stopped renewing it, and backups in an Object Lock bucket.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backup.config import BackupConfig
from backup.core import create_backup
from backup.errors import LockError, StorageError
from backup.listing import list_backups
from backup.locations import S3Location
from backup.prune import execute_prune, plan_prune
from backup.retention import RetentionPolicy
from backup.storage.s3 import S3Storage
from support.s3servers import S3Server
from support.storage import read_object

PART = 5 << 20
WRITERS = 8


def storage_on(server: S3Server, bucket: str, client: Any = None, **options: Any) -> S3Storage:
    settings: dict[str, Any] = {"lease_seconds": 2.0, "grace_seconds": 0.0}
    settings.update(options)
    return S3Storage(S3Location(bucket, "host-a"), client=client or server.client(), **settings)


def keys(server: S3Server, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in server.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def uploads(server: S3Server, bucket: str) -> list[str]:
    return [u["Key"] for u in server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def all_at_once(count: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` in ``count`` threads released together; return each result or exception."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(index: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[index] = work(index)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# --- checksums -----------------------------------------------------------------------------


def test_the_server_checks_each_checksum_moto_does_not(seaweedfs_bucket: tuple[S3Server, str]) -> None:
    server, bucket = seaweedfs_bucket
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    with pytest.raises(Exception, match="BadDigest"):
        server.client().put_object(Bucket=bucket, Key="k", Body=b"data", ChecksumSHA256=wrong)
    assert keys(server, bucket) == []


def _corrupting_client(server: S3Server, operation: str) -> Any:
    """A client whose ``operation`` requests have one byte of their body flipped after the
    checksum was computed and the request signed: data damaged on its way."""
    client = server.client(retries={"max_attempts": 0, "mode": "standard"})

    def unsigned(request: Any, **_: Any) -> None:
        request.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"  # so the checksum is what catches it

    def corrupt(request: Any, **_: Any) -> None:
        if "/.obs-backup." in request.url:
            return  # the writer's claim goes up whole; the backup's own bytes do not
        body = request.data
        data = bytearray(body.read() if hasattr(body, "read") else body)
        if data:
            data[len(data) // 2] ^= 0x01
        request.data = bytes(data)

    client.meta.events.register(f"before-sign.s3.{operation}", unsigned)
    client.meta.events.register(f"request-created.s3.{operation}", corrupt)
    return client


@pytest.mark.parametrize(("operation", "size"), [("PutObject", 1000), ("UploadPart", PART + 10)])
def test_data_damaged_on_the_way_is_rejected_and_nothing_is_left(
    seaweedfs_bucket: tuple[S3Server, str], operation: str, size: int
) -> None:
    server, bucket = seaweedfs_bucket
    storage = storage_on(server, bucket, _corrupting_client(server, operation), part_size=PART)
    upload = storage.begin("a.tar.gz", claim="a")
    with pytest.raises(StorageError, match=r"rejected the data's checksum \(BadDigest\)"):
        upload.write(os.urandom(size))
        upload.commit()
    upload.abort()
    assert storage.list_objects() == []
    assert uploads(server, bucket) == []
    assert storage.claimed("a") is False


def test_a_backup_whose_upload_is_damaged_fails_and_leaves_nothing(
    seaweedfs_bucket: tuple[S3Server, str], tmp_path: Path
) -> None:
    server, bucket = seaweedfs_bucket
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(PART * 2))
    storage = storage_on(server, bucket, _corrupting_client(server, "UploadPart"), part_size=PART)
    result = create_backup(BackupConfig(source, str(storage.s3)), storage=storage)
    assert not result.success and result.error is not None
    assert "checksum" in result.error and "\n" not in result.error
    assert [k for k in keys(server, bucket) if not k.endswith("/.obs-backup.lock")] == []
    assert uploads(server, bucket) == []


# --- conditional creates -----------------------------------------------------------------


def test_of_eight_writers_claiming_one_id_exactly_one_wins(seaweedfs_bucket: tuple[S3Server, str]) -> None:
    server, bucket = seaweedfs_bucket
    storages = [storage_on(server, bucket) for _ in range(WRITERS)]
    results = all_at_once(WRITERS, lambda i: storages[i].begin(f"b_1.tar.{i}", claim="b_1"))
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, FileExistsError)]
    assert (len(won), len(lost)) == (1, WRITERS - 1), results
    won[0].commit()  # type: ignore[attr-defined]
    assert [info.name for info in storages[0].list_objects()] == [won[0].name]  # type: ignore[attr-defined]


def test_of_eight_writers_of_one_name_exactly_one_is_let_write_it(seaweedfs_bucket: tuple[S3Server, str]) -> None:
    """Writers of one name under different claims: one writes it, the others are
    refused at once, so no two completions of one name ever race."""
    server, bucket = seaweedfs_bucket
    storages = [storage_on(server, bucket, part_size=PART) for _ in range(WRITERS)]
    results = all_at_once(WRITERS, lambda i: storages[i].begin("same.tar", claim=f"c{i}"))
    writers = [r for r in results if not isinstance(r, Exception)]
    assert len(writers) == 1 and all(isinstance(r, FileExistsError) for r in results if r not in writers), results
    data = os.urandom(PART + 10)
    writers[0].write(data)  # type: ignore[attr-defined]
    writers[0].commit()  # type: ignore[attr-defined]
    assert read_object(storages[0], "same.tar") == data
    assert uploads(server, bucket) == []
    assert not any(storages[0].claimed(f"c{i}") for i in range(WRITERS))


# --- the lock's lease ----------------------------------------------------------------------


def test_a_stale_lease_is_taken_over_and_its_old_holder_learns_it(
    seaweedfs_bucket: tuple[S3Server, str], caplog: pytest.LogCaptureFixture
) -> None:
    server, bucket = seaweedfs_bucket
    first = storage_on(server, bucket, hostname="server-1")
    second = storage_on(server, bucket, hostname="server-2")
    held = first.lock()
    held.__enter__()
    lease = held._lease
    lease._stop.set()  # the holder freezes: no more renewals (a stopped VM, a lost network)
    assert lease._thread is not None
    lease._thread.join(timeout=10)
    with pytest.raises(LockError) as refused, second.lock(0):
        pytest.fail("took a fresh lease")
    message = str(refused.value)
    assert f"s3://{bucket}/host-a: backup location is locked by host server-1 pid {os.getpid()} (since " in message
    assert "without waiting" in message
    time.sleep(3.2)  # past the 2 s lease, by the server's one-second clock
    with caplog.at_level(logging.WARNING, logger="backup.storage.s3"), second.lock(5):
        assert "took over the lock of host server-1" in caplog.text
        assert lease.renew() is False  # the old holder wakes up: its compare-and-swap fails
        with pytest.raises(StorageError, match="the lock was taken over by another process"):
            first.begin("late.tar")
        with pytest.raises(StorageError, match="taken over"):
            first.delete("anything.tar")
    held.__exit__(None, None, None)


def test_of_eight_waiters_for_a_stale_lease_exactly_one_takes_it(seaweedfs_bucket: tuple[S3Server, str]) -> None:
    server, bucket = seaweedfs_bucket
    dead = storage_on(server, bucket, hostname="dead")
    held = dead.lock()
    held.__enter__()
    held._lease._stop.set()  # dies holding it
    time.sleep(3.2)
    storages = [storage_on(server, bucket, hostname=f"waiter-{i}") for i in range(WRITERS)]
    contexts = [storage.lock(0) for storage in storages]
    results = all_at_once(WRITERS, lambda i: contexts[i].__enter__())
    holders = [i for i, r in enumerate(results) if r is None]
    assert len(holders) == 1 and all(isinstance(r, LockError) for r in results if r is not None), results
    contexts[holders[0]].__exit__(None, None, None)


# --- Object Lock ------------------------------------------------------------------------------


def test_backups_in_an_object_lock_bucket(seaweedfs_server: S3Server, tmp_path: Path) -> None:
    """With S3 Object Lock (versioning, a default retention), uploads carry the
    checksum such buckets demand, backups restore, and prune removes a backup from the
    listing while the locked version stays until its retention ends."""
    server = seaweedfs_server
    bucket = server.make_bucket(object_lock=True)
    client = server.client()
    client.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.bin").write_bytes(os.urandom(PART * 2))
    storage = storage_on(server, bucket, part_size=PART)
    for _ in range(2):
        result = create_backup(BackupConfig(source, str(storage.s3)), storage=storage)
        assert result.success, result.error
    first, second = list_backups(storage)
    with storage.lock():
        plan = plan_prune(storage, RetentionPolicy(keep_last=1), zone=__import__("datetime").UTC)
        pruned = execute_prune(storage, plan)
    assert pruned.success, pruned.errors
    assert [b.backup_id for b in list_backups(storage)] == [second.backup_id]
    versions = client.list_object_versions(Bucket=bucket, Prefix=f"host-a/{first.archive.name}")
    kept = [v for v in versions.get("Versions", []) if v["Key"].endswith(first.archive.name)]
    assert kept, "the pruned archive's locked version is gone"
    with pytest.raises(Exception, match=r"AccessDenied|ObjectLocked|Forbidden"):
        client.delete_object(Bucket=bucket, Key=kept[0]["Key"], VersionId=kept[0]["VersionId"])
