"""Backups in S3-compatible object storage, end to end through the command line, on
real servers on 127.0.0.1 (moto for most, SeaweedFS where the store's own checks
matter), with the bad days an object store brings: connections cut mid-upload, server
errors, slow responses, a writer or a pruner killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backup.config import BackupConfig, BackupResult, SchedulerConfig
from backup.core import create_backup, restore_backup
from backup.listing import list_backups
from backup.locations import S3Location
from backup.scheduler import BackupScheduler
from backup.storage import open_storage
from backup.storage.s3 import S3Storage
from backup.verify import verify_backup
from support.cli import run_cli
from support.s3servers import FaultProxy, S3Server

from .conftest import SRC, snapshot

Env = Callable[[S3Server], dict[str, str]]


def make_source(root: Path, big: int = 0) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    if big:
        (root / "big.bin").write_bytes(os.urandom(big))
    return root


def keys(server: S3Server, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in server.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def uploads(server: S3Server, bucket: str) -> list[str]:
    return [u["Key"] for u in server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def obs(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {}), "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "backup", *args], env=environment, capture_output=True, text=True, timeout=120, **kwargs
    )


@pytest.fixture(params=["moto", "seaweedfs"])
def bucket(request: pytest.FixtureRequest, s3_env: Env) -> tuple[S3Server, str]:
    server, name = request.getfixturevalue(f"{request.param}_bucket")
    s3_env(server)
    return server, name


def test_back_up_list_verify_restore_prune_and_copy_through_a_bucket(
    bucket: tuple[S3Server, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's walk-through: every command takes s3://bucket/prefix where it takes
    a directory, and a restore from the bucket is byte for byte the source."""
    server, name = bucket
    source = make_source(tmp_path / "src", big=9 << 20)  # more than one 8 MiB part
    url = f"s3://{name}/host-a?grace=0"
    code, out, err = run_cli(capsys, "create", str(source), url, "--compression", "zst", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["path"].startswith(f"s3://{name}/host-a/backup_") and created["path"].endswith(".tar.zst")
    assert created["manifest_path"] is None  # no local file: the manifest is in the bucket
    code, out, err = run_cli(capsys, "list", url, "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [b["archive_path"] for b in listed] == [created["path"]]
    assert listed[0]["manifest_path"].endswith(".manifest.json")

    code, out, err = run_cli(capsys, "verify", "latest", "--backup-dir", url)
    assert code == 0 and "OK" in out, err
    code, out, err = run_cli(capsys, "verify", created["path"])  # by URL, as a path is given
    assert code == 0, err
    code, _, err = run_cli(capsys, "restore", "latest", str(tmp_path / "out"), "--backup-dir", url)
    assert code == 0, err
    assert snapshot(tmp_path / "out") == snapshot(source)

    code, _, err = run_cli(capsys, "copy", url, str(tmp_path / "local"))
    assert code == 0, err
    code, out, _ = run_cli(capsys, "list", str(tmp_path / "local"), "--json")
    assert [b["backup_id"] for b in json.loads(out)] == [created["backup_id"]]
    code, out, err = run_cli(capsys, "copy", url, str(tmp_path / "local"))
    assert code == 0 and "0 backups" in out and "1 already there" in out, err

    code, _, err = run_cli(capsys, "create", str(source), url, "--compression", "gz")
    assert code == 0, err
    code, out, err = run_cli(capsys, "prune", url, "--keep-last", "1")
    assert code == 0, err
    assert [b.backup_id for b in list_backups(url)] != [created["backup_id"]]
    assert len(list_backups(url)) == 1
    assert not any(key.endswith(".tar.zst") for key in keys(server, name))  # the pruned archive is gone
    code, out, err = run_cli(capsys, "check", url, "--read-data")
    assert code == 0, err


def test_copy_between_stores_and_back(bucket: tuple[S3Server, str], tmp_path: Path, capsys: Any) -> None:
    """local -> S3 -> S3 (another prefix) -> local: the same archives, byte for byte."""
    _server, name = bucket
    source = make_source(tmp_path / "src")
    local = tmp_path / "backups"
    for compression in ("gz", "xz"):
        assert run_cli(capsys, "create", str(source), str(local), "--compression", compression)[0] == 0
    assert run_cli(capsys, "copy", str(local), f"s3://{name}/site-1")[0] == 0
    assert run_cli(capsys, "copy", f"s3://{name}/site-1", f"s3://{name}/site-2")[0] == 0
    assert run_cli(capsys, "copy", f"s3://{name}/site-2", str(tmp_path / "back"))[0] == 0
    originals = {p.name: p.read_bytes() for p in local.iterdir() if not p.name.startswith(".")}
    returned = {p.name: p.read_bytes() for p in (tmp_path / "back").iterdir() if not p.name.startswith(".")}
    assert returned == originals
    code, out, err = run_cli(capsys, "copy", f"s3://{name}/site-2", str(tmp_path / "empty"), "--dry-run")
    assert code == 0 and out.count("would copy backup_") == 2, err
    assert not (tmp_path / "empty").exists()


def test_copy_refuses_an_archive_that_does_not_match_its_manifest(
    moto_bucket: tuple[S3Server, str], s3_env: Env, tmp_path: Path, capsys: Any
) -> None:
    """A damaged source copy is named and not copied; the others still are."""
    server, name = moto_bucket
    s3_env(server)
    source = make_source(tmp_path / "src")
    local = tmp_path / "backups"
    for compression in ("gz", "zst"):
        assert run_cli(capsys, "create", str(source), str(local), "--compression", compression)[0] == 0
    damaged = next(local.glob("*.tar.gz"))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x40
    damaged.write_bytes(bytes(data))
    code, _out, err = run_cli(capsys, "copy", str(local), f"s3://{name}/site")
    assert code == 1
    assert f"{damaged}: read {len(data)} bytes with checksum" in err and "the source copy is damaged" in err
    assert [b.archive.name for b in list_backups(f"s3://{name}/site")] == [next(local.glob("*.tar.zst")).name]
    assert uploads(server, name) == []


def test_no_manifest_is_refused_for_object_storage(
    moto_bucket: tuple[S3Server, str], s3_env: Env, tmp_path: Path, capsys: Any
) -> None:
    server, name = moto_bucket
    s3_env(server)
    code, _, err = run_cli(capsys, "create", str(make_source(tmp_path / "s")), f"s3://{name}/x", "--no-manifest")
    assert code == 2
    assert "every backup has a manifest" in err and "drop --no-manifest" in err
    assert keys(server, name) == []


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("s3:/bucket/x", "not a URL; an object store is named s3://bucket/prefix"),
        ("s3://AKID:wJalrXUtnFEMI@bucket/x", "credentials do not belong in the URL"),
        ("gs://bucket/x", "unknown location scheme 'gs://'"),
        ("s3://b/x", "is not a bucket name"),
        ("s3://bucket/x?lease=soon", "lease must be a number of seconds"),
    ],
)
def test_bad_locations_are_one_line_usage_errors(location: str, message: str, tmp_path: Path, capsys: Any) -> None:
    code, _, err = run_cli(capsys, "create", str(make_source(tmp_path / "s")), location)
    assert code == 2
    last = err.splitlines()[-1]  # after the usage lines, the error in one line
    assert last.startswith("obs-backup: error: argument DIR: ") and message in last
    assert "wJalrXUtnFEMI" not in err and "AKID" not in err


def test_an_unreachable_store_is_a_one_line_failure(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens on the endpoint: the error names the location, once, and the
    credentials appear nowhere."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETLOOKING")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    location = "s3://bucket-x/p?endpoint=http://127.0.0.1:9&lease=1"
    code, out, err = run_cli(capsys, "list", location)
    assert code == 1
    assert err.startswith("obs-backup: error: s3://bucket-x/p: cannot reach the object store: ")
    assert err.count("\n") == 1 and "does not exist" not in err
    assert "very-secret-value" not in out + err and "AKIDSECRETLOOKING" not in out + err


def test_credentials_in_an_endpoint_url_are_refused_and_not_repeated(tmp_path: Path, capsys: Any) -> None:
    for argv in (
        ["list", "s3://bucket-x/p", "--endpoint-url", "http://AKID:wJalrXUtnFEMI@127.0.0.1:9"],
        ["list", "s3://bucket-x/p?endpoint=http://AKID:wJalrXUtnFEMI@127.0.0.1:9"],
    ):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2
        assert "credentials do not belong in the endpoint URL" in err
        assert "wJalrXUtnFEMI" not in out + err and "AKID" not in out + err


def test_missing_credentials_are_named_as_such(tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = run_cli(capsys, "list", "s3://bucket-y/p?endpoint=http://127.0.0.1:9")
    assert code == 1
    assert err == (
        "obs-backup: error: s3://bucket-y/p: no usable AWS credentials (Unable to locate credentials); "
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE\n"
    )


# --- many hosts, one bucket ----------------------------------------------------------------


def test_hosts_sharing_a_bucket_never_touch_each_others_backups(
    moto_bucket: tuple[S3Server, str], s3_env: Env, tmp_path: Path, capsys: Any
) -> None:
    server, name = moto_bucket
    s3_env(server)
    source = make_source(tmp_path / "src")
    for host in ("host-a", "host-b", "host-a/nested"):
        for _ in range(2):
            assert run_cli(capsys, "create", str(source), f"s3://{name}/{host}")[0] == 0
    server.client().put_object(Bucket=name, Key="host-a/notes.txt", Body=b"not a backup")
    server.client().put_object(Bucket=name, Key="host-a/backup_20200101_000000.tar.gz", Body=b"looks like one")
    theirs = [k for k in keys(server, name) if not k.startswith("host-a/backup_2026") or "/nested/" in k]
    code, _out, err = run_cli(capsys, "prune", f"s3://{name}/host-a?grace=0", "--keep-last", "1")
    assert code == 0, err
    assert len(list_backups(f"s3://{name}/host-a")) == 1
    remaining = keys(server, name)
    assert all(key in remaining for key in theirs)
    assert len(list_backups(f"s3://{name}/host-b")) == 2 and len(list_backups(f"s3://{name}/host-a/nested")) == 2


# --- faults: the connection, the server -------------------------------------------------


@dataclass
class Proxied:
    """A bucket on moto, reached through a fault proxy."""

    server: S3Server
    bucket: str
    proxy: FaultProxy

    def storage(self, **options: Any) -> S3Storage:
        settings: dict[str, Any] = {"lease_seconds": 1.0, "grace_seconds": 0.0, "retries": 3, "read_timeout": 2.0}
        settings.update(options)
        storage = S3Storage(S3Location(self.bucket, "host-a", endpoint_url=self.proxy.endpoint), **settings)
        storage.ensure()
        return storage

    def back_up(self, source: Path, storage: S3Storage) -> BackupResult:
        return create_backup(BackupConfig(source, storage.location), storage=storage)

    def leftovers(self) -> tuple[list[str], list[str]]:
        """The keys in the bucket, and its multipart uploads."""
        return keys(self.server, self.bucket), uploads(self.server, self.bucket)


@pytest.fixture
def proxied(moto_bucket: tuple[S3Server, str], s3_env: Env, fault_proxy: Callable[[S3Server], FaultProxy]) -> Proxied:
    server, name = moto_bucket
    s3_env(server)
    return Proxied(server, name, fault_proxy(server))


def test_a_connection_cut_mid_upload_is_retried(proxied: Proxied, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src", big=10 << 20)
    storage = proxied.storage()
    proxied.proxy.cut_after(3 << 20, times=2)  # the first part's connection, twice
    result = proxied.back_up(source, storage)
    assert result.success, result.error
    assert proxied.proxy.cuts == 2
    [backup] = list_backups(storage)
    restored = restore_backup(backup.archive, tmp_path / "out")
    assert restored.success, restored.error
    assert snapshot(tmp_path / "out") == snapshot(source)
    assert proxied.leftovers()[1] == []


def test_a_connection_that_keeps_breaking_fails_cleanly(proxied: Proxied, tmp_path: Path) -> None:
    """Retries run out: the backup fails with one line naming the object, and leaves
    no object, no parts and no claim behind."""
    source = make_source(tmp_path / "src", big=10 << 20)
    storage = proxied.storage()
    proxied.proxy.cut_after(1 << 20, times=1000)
    result = proxied.back_up(source, storage)
    assert not result.success
    assert result.error is not None and result.error.startswith(f"s3://{proxied.bucket}/host-a/backup_")
    assert "\n" not in result.error
    proxied.proxy.reset()
    assert proxied.leftovers() == ([], [])


def test_server_errors_are_retried_with_backoff_then_fail_cleanly(proxied: Proxied, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    storage = proxied.storage()
    proxied.proxy.fail_next(2, status=503)
    started = time.monotonic()
    assert proxied.back_up(source, storage).success
    assert proxied.proxy.failed_requests == 2
    assert time.monotonic() - started > 0.05  # it backed off before retrying (a lower bound only)
    proxied.proxy.fail_next(10_000, status=500)
    result = proxied.back_up(source, storage)
    assert not result.success and result.error is not None
    assert "500" in result.error or "InternalError" in result.error or "reach" in result.error
    proxied.proxy.reset()
    assert len(list_backups(storage)) == 1
    assert proxied.leftovers()[1] == []


def test_slow_responses_time_out_and_fail_cleanly(proxied: Proxied, tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    storage = proxied.storage(read_timeout=0.5, retries=2)
    proxied.proxy.delay(2.0)
    result = proxied.back_up(source, storage)
    assert not result.success and result.error is not None
    assert "timed out" in result.error.lower() or "timeout" in result.error.lower()
    proxied.proxy.reset()
    time.sleep(2.5)  # the claims the slow run could not remove go stale (lease 1 s)
    storage.clean_partials()
    assert [k for k in proxied.leftovers()[0] if not k.endswith(".obs-backup.lock")] == []


# --- SIGKILL ----------------------------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition was never met"
        time.sleep(0.05)


def test_a_writer_killed_mid_upload_leaves_nothing_that_looks_complete(
    moto_bucket: tuple[S3Server, str], s3_env: Env, fault_proxy: Callable[[S3Server], FaultProxy], tmp_path: Path
) -> None:
    """SIGKILL while parts are going up: nothing is listed, check calls nothing damaged,
    and the next run (once the claim is stale) aborts the parts and removes the claim."""
    server, name = moto_bucket
    s3_env(server)
    proxy = fault_proxy(server)
    proxy.delay(0.3)  # slow enough to be caught mid-upload
    env = {**server.env(), "AWS_ENDPOINT_URL_S3": proxy.endpoint}
    source = make_source(tmp_path / "src", big=40 << 20)
    url = f"s3://{name}/host-a?lease=1&grace=0"
    process = subprocess.Popen(
        [sys.executable, "-m", "backup", "create", str(source), url, "--quiet"],
        env={**os.environ, **env, "PYTHONPATH": str(SRC)},
    )
    try:
        _wait_for(lambda: len(uploads(server, name)) == 1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    proxy.reset()
    assert list_backups(S3Location(name, "host-a", endpoint_url=server.endpoint)) == []
    assert [k for k in keys(server, name) if not k.split("/")[-1].startswith(".")] == []
    checked = obs("check", url, "--json", env=env)
    assert checked.returncode == 0, checked.stderr
    time.sleep(2.5)
    again = obs("create", str(make_source(tmp_path / "src2")), url, "--quiet", env=env)
    assert again.returncode == 0, again.stderr
    assert uploads(server, name) == []
    hidden = [k.split("/")[-1] for k in keys(server, name) if k.split("/")[-1].startswith(".")]
    assert not any(key.endswith(".claim") for key in hidden), hidden
    assert len(list_backups(S3Location(name, "host-a", endpoint_url=server.endpoint))) == 1


def test_a_pruner_killed_mid_prune_leaves_only_complete_backups_listed(
    moto_bucket: tuple[S3Server, str], s3_env: Env, fault_proxy: Callable[[S3Server], FaultProxy], tmp_path: Path
) -> None:
    """SIGKILL between a manifest's removal and its archive's: the backup is no longer
    listed (the manifest is the commit point, and goes first), everything still listed
    verifies, and the next prune removes the leftover archive."""
    server, name = moto_bucket
    env = s3_env(server)
    url = f"s3://{name}/host-a?lease=1&grace=0"
    source = make_source(tmp_path / "src")
    for _ in range(5):
        assert create_backup(BackupConfig(source, url)).success
    proxy = fault_proxy(server)
    proxy.delay(0.15)
    slow = {**env, "AWS_ENDPOINT_URL_S3": proxy.endpoint}
    location = S3Location(name, "host-a", endpoint_url=server.endpoint)
    manifests = lambda: sum(k.endswith(".manifest.json") for k in keys(server, name))  # noqa: E731
    process = subprocess.Popen(
        [sys.executable, "-m", "backup", "prune", url, "--keep-last", "1", "--quiet"],
        env={**os.environ, **slow, "PYTHONPATH": str(SRC)},
    )
    try:
        _wait_for(lambda: manifests() < 5)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    proxy.reset()
    listed = list_backups(location)
    assert len(listed) >= 1
    for backup in listed:
        assert backup.manifest is not None
        report = verify_backup(backup.archive, backup.manifest)
        assert report.ok, report.lines()
    time.sleep(2.5)  # the killed pruner's lock goes stale
    pruned = obs("prune", url, "--keep-last", "1", env=env)
    assert pruned.returncode == 0, pruned.stderr
    archives = [k for k in keys(server, name) if ".tar" in k]
    assert len(archives) == 1 and manifests() == 1


# --- the scheduler --------------------------------------------------------------------


def test_the_scheduler_copies_each_backup_off_site(
    moto_bucket: tuple[S3Server, str], s3_env: Env, tmp_path: Path
) -> None:
    server, name = moto_bucket
    s3_env(server)
    source = make_source(tmp_path / "src")
    config = SchedulerConfig(
        source_dir=source, backup_dir=tmp_path / "local", copy_to=[f"s3://{name}/off-site"], tz_name="UTC"
    )
    outcome = BackupScheduler(config).run_once()
    assert outcome.result.success and outcome.result.warnings == []
    [local] = list_backups(tmp_path / "local")
    [remote] = list_backups(f"s3://{name}/off-site")
    assert remote.backup_id == local.backup_id
    assert open_storage(f"s3://{name}/off-site").stat(remote.archive.name).size == local.size_bytes


def test_a_failed_off_site_copy_is_a_warning_not_a_lost_backup(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src")
    config = SchedulerConfig(
        source_dir=source,
        backup_dir=tmp_path / "local",
        copy_to=["s3://nowhere-bucket/x?endpoint=http://127.0.0.1:9"],
        tz_name="UTC",
        lock_timeout=0,
    )
    outcome = BackupScheduler(config).run_once()
    assert outcome.result.success
    assert len(list_backups(tmp_path / "local")) == 1
    [warning] = outcome.result.warnings
    assert warning.startswith("copy to s3://nowhere-bucket/x failed: ")


def test_check_finds_damage_in_a_bucket(
    moto_bucket: tuple[S3Server, str], s3_env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bit rot in one archive and a lost archive are found by check, which changes nothing."""
    server, name = moto_bucket
    s3_env(server)
    url = f"s3://{name}/host-a"
    source = make_source(tmp_path / "src")
    for _ in range(3):
        assert run_cli(capsys, "create", str(source), url)[0] == 0
    first, second, _third = list_backups(url)
    client = server.client()
    key = f"host-a/{first.archive.name}"
    data = bytearray(client.get_object(Bucket=name, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x10
    client.put_object(Bucket=name, Key=key, Body=bytes(data))
    client.delete_object(Bucket=name, Key=f"host-a/{second.archive.name}")
    before = keys(server, name)
    code, out, err = run_cli(capsys, "check", url, "--read-data", "--json")
    assert code == 1, err
    statuses = {row["backup_id"]: row["status"] for row in json.loads(out)["backups"]}
    assert statuses == {first.backup_id: "damaged", second.backup_id: "missing archive", _third.backup_id: "ok"}
    assert keys(server, name) == before


def test_a_config_file_names_the_bucket_its_endpoint_and_the_off_site_copy(
    moto_bucket: tuple[S3Server, str],
    s3_env: Env,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """backup_dir, endpoint_url and copy_to in the TOML file; the endpoint comes from the
    file alone (the environment names none), and relative paths stay relative to it."""
    server, name = moto_bucket
    s3_env(server)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    make_source(tmp_path / "src")
    config = tmp_path / "etc" / "obs-backup.toml"
    config.parent.mkdir()
    config.write_text(
        f'source = "../src"\nbackup_dir = "s3://{name}/web-1"\nendpoint_url = "{server.endpoint}"\n'
        f'[schedule]\ncopy_to = ["local-copy"]\n'
    )
    code, out, err = run_cli(capsys, "--config", str(config), "create", "--json")
    assert code == 0, err
    assert json.loads(out)["path"].startswith(f"s3://{name}/web-1/")
    code, out, err = run_cli(capsys, "--config", str(config), "list", "--json")
    assert code == 0 and len(json.loads(out)) == 1, err
    from backup.cli import _config, _resolve, build_parser

    args = _resolve(build_parser().parse_args(["--config", str(config), "schedule"]))
    scheduler = _config(SchedulerConfig, args)
    assert scheduler.backup_dir == S3Location(name, "web-1", endpoint_url=server.endpoint)
    assert scheduler.copy_to == (config.parent / "local-copy",)
    assert scheduler.source_dir == config.parent / "../src"
    assert BackupScheduler(scheduler).run_once().result.success
    # The scheduler copies its own prefix's backups (scheduled_backup_...), not create's.
    [copied] = list_backups(config.parent / "local-copy")
    assert copied.prefix == "scheduled_backup"


def test_copy_refuses_what_object_storage_cannot_hold_and_what_is_half_there(
    moto_bucket: tuple[S3Server, str], s3_env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source backup without a manifest cannot become a backup in a bucket, and a
    backup the bucket holds only part of is named and left alone; the rest is copied."""
    server, name = moto_bucket
    s3_env(server)
    source = make_source(tmp_path / "src")
    local = tmp_path / "backups"
    assert run_cli(capsys, "create", str(source), str(local), "--no-manifest", "--prefix", "bare")[0] == 0
    assert run_cli(capsys, "create", str(source), str(local), "--prefix", "full")[0] == 0
    assert run_cli(capsys, "create", str(source), str(local), "--prefix", "half")[0] == 0
    url = f"s3://{name}/site"
    [half] = list_backups(local, prefix="half")
    server.client().put_object(Bucket=name, Key=f"site/{half.archive.name}", Body=b"an earlier, cut-off copy")
    code, out, err = run_cli(capsys, "copy", str(local), url)
    assert code == 1 and "copied 1 backup " in out
    [bare] = list_backups(local, prefix="bare")
    assert f"{bare.backup_id}: not copied: {bare.archive.label}: has no manifest, and in object storage" in err
    assert f"the destination has part of {half.backup_id} but not a complete backup; left alone" in err
    assert [b.prefix for b in list_backups(url)] == ["full"]
    assert server.client().get_object(Bucket=name, Key=f"site/{half.archive.name}")["Body"].read() == (
        b"an earlier, cut-off copy"
    )
