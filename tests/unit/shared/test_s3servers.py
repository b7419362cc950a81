"""Tests of the S3 test support itself (support.s3servers, support.s3fixtures): the servers
answer, SeaweedFS listens on 127.0.0.1 only and leaves nothing behind, and each FaultProxy
fault does what it says. Timing checks are lower bounds only."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3.session
import pytest
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from support import s3servers
from support.s3servers import FaultProxy, S3Server, ServerUnavailable, start_seaweedfs

ProxyFactory = Callable[[S3Server], FaultProxy]

TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


def no_retries(server: S3Server) -> Any:
    """A client of ``server`` that makes one attempt per call, so every fault surfaces."""
    return server.client(retries={"max_attempts": 0, "mode": "standard"})  # retries, not attempts


def error_status(error: ClientError) -> int:
    return int(error.response["ResponseMetadata"]["HTTPStatusCode"])


def round_trip(server: S3Server, bucket: str) -> None:
    """Put, list and get one object; check what comes back."""
    client = server.client()
    data = os.urandom(100_000)
    client.put_object(Bucket=bucket, Key="dir/object.bin", Body=data)
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(item["Key"], item["Size"]) for item in listed] == [("dir/object.bin", len(data))]
    assert client.get_object(Bucket=bucket, Key="dir/object.bin")["Body"].read() == data


def object_lock_enabled(server: S3Server) -> str:
    bucket = server.make_bucket(object_lock=True)
    lock = server.client().get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    return str(lock["ObjectLockEnabled"])


def decode_proc_address(text: str) -> tuple[str, int]:
    """Turn a /proc/net/tcp{,6} address ("0100007F:1F90") into ("127.0.0.1", 8080)."""
    host_hex, port_hex = text.split(":")
    raw = bytes.fromhex(host_hex)
    if sys.byteorder == "little":  # printed as 32-bit words in host byte order
        raw = b"".join(raw[start : start + 4][::-1] for start in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port_hex, 16)


def tcp_sockets(pid: int) -> list[tuple[str, int, str]]:
    """Return (local address, local port, state) for each TCP socket the process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # fds come and go while we look
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                host, port = decode_proc_address(fields[1])
                found.append((host, port, fields[3]))
    return found


def test_decode_proc_address() -> None:
    assert decode_proc_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert decode_proc_address("00000000000000000000000001000000:0050") == ("::1", 80)
    assert decode_proc_address("00000000000000000000000000000000:0050") == ("::", 80)


# --- moto ---------------------------------------------------------------------------------


def test_moto_round_trip(moto_bucket: tuple[S3Server, str]) -> None:
    server, bucket = moto_bucket
    assert server.kind == "moto"
    assert server.endpoint.startswith("http://127.0.0.1:")
    round_trip(server, bucket)


def test_moto_buckets_are_new_each_time(moto_server: S3Server) -> None:
    first, second = moto_server.make_bucket(), moto_server.make_bucket()
    assert first != second
    assert 3 <= len(first) <= 63 and first == first.lower()
    assert object_lock_enabled(moto_server) == "Enabled"


def test_env_points_a_plain_boto3_session_at_the_server(
    moto_bucket: tuple[S3Server, str], s3_env: Callable[[S3Server], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A default boto3 session, configured by nothing but the environment, reaches the server,
    even with a developer's profile and endpoint set beforehand."""
    server, bucket = moto_bucket
    monkeypatch.setenv("AWS_PROFILE", "a-developers-profile")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://192.0.2.1:9")
    values = s3_env(server)
    assert values["AWS_CONFIG_FILE"] == values["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull
    assert "AWS_PROFILE" not in os.environ and "AWS_ENDPOINT_URL" not in os.environ
    client = boto3.session.Session().client("s3")
    assert bucket in [entry["Name"] for entry in client.list_buckets()["Buckets"]]


# --- SeaweedFS ----------------------------------------------------------------------------


def test_seaweedfs_round_trip(seaweedfs_bucket: tuple[S3Server, str]) -> None:
    server, bucket = seaweedfs_bucket
    assert server.kind == "seaweedfs"
    round_trip(server, bucket)
    assert object_lock_enabled(server) == "Enabled"


def test_seaweedfs_checks_signatures(seaweedfs_server: S3Server) -> None:
    """An identity is configured, so a wrong secret is refused (not any signature accepted)."""
    impostor = S3Server("seaweedfs", seaweedfs_server.endpoint, seaweedfs_server.access_key, "not-the-secret")
    with pytest.raises(ClientError) as caught:
        no_retries(impostor).list_buckets()
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_seaweedfs_listens_on_loopback_only(seaweedfs_server: S3Server) -> None:
    """Every TCP socket of weed is on 127.0.0.1, and it listens on the ports it was given, no others."""
    assert seaweedfs_server.pid is not None
    sockets = tcp_sockets(seaweedfs_server.pid)
    listening = {(host, port) for host, port, state in sockets if state == TCP_LISTEN}
    assert listening, "weed holds no listening sockets: is it still running?"
    assert {host for host, _, _ in sockets} == {"127.0.0.1"}, sockets
    assert {port for _, port in listening} <= set(seaweedfs_server.ports.values()), listening
    assert seaweedfs_server.address in listening


def test_seaweedfs_stops_without_leftovers(tmp_path: Path) -> None:
    """After the context exits, weed's process is gone and so are its sockets in /tmp."""
    with start_seaweedfs(tmp_path) as server:
        pid = server.pid
        assert pid is not None
        server.client().list_buckets()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    grpc_ports = {port for name, port in server.ports.items() if name.endswith(".grpc")}
    sockets = Path("/tmp").glob("seaweedfs-*-grpc-*.sock")
    assert not [path for path in sockets if int(path.stem.rsplit("-", 1)[1]) in grpc_ports]


def test_seaweedfs_that_exits_is_reported_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'flag provided but not defined: -s3.port.lance'\nexit 2\n")
    fake.chmod(0o755)
    monkeypatch.setattr(s3servers, "weed_binary", lambda: fake)
    with pytest.raises(ServerUnavailable) as caught:
        with start_seaweedfs(tmp_path / "work"):
            pytest.fail("a weed that exits cannot be ready")
    assert "exited with status 2" in caught.value.reason
    assert "flag provided but not defined" in caught.value.reason


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_seaweedfs_that_never_answers_is_stopped_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the startup timeout the reason says so, and the whole process group is gone,
    a child the server started included."""
    fake = tmp_path / "weed"
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {tmp_path}/child.pid\necho starting\nexec sleep 300\n")
    fake.chmod(0o755)
    monkeypatch.setattr(s3servers, "weed_binary", lambda: fake)
    with pytest.raises(ServerUnavailable) as caught:
        with start_seaweedfs(tmp_path / "work", timeout=0.5):
            pytest.fail("a weed that never answers cannot be ready")
    assert "did not answer ListBuckets within" in caught.value.reason
    assert "starting" in caught.value.reason  # the log's last lines
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while running(child) and time.monotonic() < deadline:  # SIGTERM was sent; it takes a moment
        time.sleep(0.05)
    assert not running(child)


def test_seaweedfs_that_cannot_run_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "weed"
    fake.write_bytes(b"\x7fELF not really")
    fake.chmod(0o644)
    monkeypatch.setattr(s3servers, "weed_binary", lambda: fake)
    with pytest.raises(ServerUnavailable, match="cannot run"):
        with start_seaweedfs(tmp_path / "work"):
            pytest.fail("a weed that cannot be executed cannot be ready")


# --- FaultProxy ---------------------------------------------------------------------------


def test_proxy_passes_requests_through(moto_bucket: tuple[S3Server, str], fault_proxy: ProxyFactory) -> None:
    server, bucket = moto_bucket
    proxy = fault_proxy(server)
    assert proxy.endpoint == proxy.server.endpoint and proxy.endpoint.startswith("http://127.0.0.1:")
    round_trip(proxy.server, bucket)
    assert proxy.connections >= 1
    assert (proxy.failed_requests, proxy.cuts) == (0, 0)


def test_cut_after_cuts_an_upload_mid_way(moto_bucket: tuple[S3Server, str], fault_proxy: ProxyFactory) -> None:
    """A connection carrying more than the limit is cut: the upload fails and stores nothing;
    smaller connections pass, and once ``times`` cuts are used up uploads pass again."""
    server, bucket = moto_bucket
    proxy = fault_proxy(server)
    proxy.cut_after(20_000)
    through = no_retries(proxy.server)
    through.head_bucket(Bucket=bucket)
    assert proxy.cuts == 0
    with pytest.raises((HTTPClientError, ConnectionError)):
        through.put_object(Bucket=bucket, Key="cut", Body=os.urandom(200_000))
    assert proxy.cuts == 1
    with pytest.raises(ClientError) as caught:
        server.client().head_object(Bucket=bucket, Key="cut")
    assert error_status(caught.value) == 404
    through.put_object(Bucket=bucket, Key="whole", Body=os.urandom(200_000))
    assert proxy.cuts == 1


def fail_one_put(server: S3Server, bucket: str, proxy: FaultProxy) -> None:
    """Make a request, fail the next one (a put), check it never reached the server and
    that the request after it passes."""
    through = no_retries(proxy.server)
    through.head_bucket(Bucket=bucket)
    proxy.fail_next(1)
    with pytest.raises(ClientError) as caught:
        through.put_object(Bucket=bucket, Key="failed", Body=b"data")
    assert error_status(caught.value) == 503
    assert caught.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert proxy.failed_requests == 1
    through.put_object(Bucket=bucket, Key="passed", Body=b"data")
    keys = [item["Key"] for item in server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["passed"]


def test_fail_next_answers_without_forwarding(moto_bucket: tuple[S3Server, str], fault_proxy: ProxyFactory) -> None:
    server, bucket = moto_bucket
    fail_one_put(server, bucket, fault_proxy(server))


def test_fail_next_fails_a_request_on_a_kept_alive_connection(
    seaweedfs_bucket: tuple[S3Server, str], fault_proxy: ProxyFactory
) -> None:
    """The failure hits the next request, not the next connection. (moto's server closes
    every connection after one response; SeaweedFS keeps them open.)"""
    server, bucket = seaweedfs_bucket
    proxy = fault_proxy(server)
    fail_one_put(server, bucket, proxy)
    assert proxy.connections == 2  # the first, and the one after the failure closed it


def test_fail_next_counts_requests_and_answers_head(
    moto_bucket: tuple[S3Server, str], fault_proxy: ProxyFactory
) -> None:
    server, bucket = moto_bucket
    proxy = fault_proxy(server)
    through = no_retries(proxy.server)
    proxy.fail_next(2, status=500)
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            through.head_bucket(Bucket=bucket)
        assert error_status(caught.value) == 500
    through.head_bucket(Bucket=bucket)
    assert proxy.failed_requests == 2


def test_retries_get_past_failures(moto_bucket: tuple[S3Server, str], fault_proxy: ProxyFactory) -> None:
    """The default client (two retries) rides over two injected 503s."""
    server, bucket = moto_bucket
    proxy = fault_proxy(server)
    proxy.fail_next(2)
    proxy.server.client().put_object(Bucket=bucket, Key="retried", Body=b"data")
    assert proxy.failed_requests == 2
    assert server.client().get_object(Bucket=bucket, Key="retried")["Body"].read() == b"data"


def test_delay_holds_back_responses(moto_bucket: tuple[S3Server, str], fault_proxy: ProxyFactory) -> None:
    server, bucket = moto_bucket
    proxy = fault_proxy(server)
    through = no_retries(proxy.server)

    def timed_call() -> float:
        started = time.monotonic()
        through.head_bucket(Bucket=bucket)
        return time.monotonic() - started

    proxy.delay(0.4, count=1)
    assert timed_call() >= 0.4
    proxy.delay(0.2)  # every response from now on
    assert timed_call() >= 0.2
    assert timed_call() >= 0.2


def test_reset_clears_faults(moto_bucket: tuple[S3Server, str], fault_proxy: ProxyFactory) -> None:
    server, bucket = moto_bucket
    proxy = fault_proxy(server)
    proxy.fail_next(5)
    proxy.cut_after(0, times=5)
    proxy.delay(30)
    proxy.reset()
    no_retries(proxy.server).put_object(Bucket=bucket, Key="k", Body=b"data")
    assert (proxy.failed_requests, proxy.cuts) == (0, 0)


def test_close_ends_connections_and_threads(moto_bucket: tuple[S3Server, str]) -> None:
    server, bucket = moto_bucket
    with FaultProxy(server) as proxy:
        proxy.server.client().head_bucket(Bucket=bucket)  # leaves a kept-alive connection open
    assert not [thread for thread in threading.enumerate() if thread.name.startswith(f"fault-proxy-{proxy.port}-")]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
