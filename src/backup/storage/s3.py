"""A backup location in an S3-compatible object store: ``s3://bucket/prefix``.

Objects are keys ``prefix/name`` directly under the prefix; keys further down (another
host's ``prefix/other/...``) are never listed, read or removed. Everything this module
writes besides objects has a hidden name under the prefix:

* ``.obs-backup.<key>.claim``: a writer's claim, created with ``If-None-Match: *`` (so
  one writer wins each key), renewed by the writer every ``lease_seconds / 5`` with a
  compare-and-swap on its ETag, and naming its host, pid and multipart upload. A claim
  not renewed for ``lease_seconds`` (by the server's clock) belongs to a dead writer:
  ``clean_partials`` aborts its upload and removes it.
* ``.obs-backup.<name>.writing``: the same, on the object's name, so that two writers
  of one name (with different keys) never upload it at once: the completion of an
  upload is then never raced, which matters on stores whose conditional completion is
  not atomic (SeaweedFS 4.48 let 2 of 8 simultaneous completions of one name succeed).
* ``.obs-backup.lock``: the location's lock, a lease of the same kind (see ``_Lease``).
* records (``.obs-backup-state.json``), replaced whole by a plain PUT.

An upload streams: bytes are cut into equal parts, each sent with its SHA-256, which
the server checks, while the next is filled; at most ``max_in_flight`` parts are in
memory besides the one being filled. An object smaller than one part is sent by one
PUT at commit. Commit completes the upload with ``If-None-Match: *``, so an existing
key is never replaced, then reads back the object's size and checksum and compares
them with what was sent. Until then nothing is visible under the name; a failed upload
is aborted, a killed one's parts are aborted by the next ``clean_partials``.

Times that decide what is stale come from the server (its ``Date`` header and the
objects' ``Last-Modified``), never from this machine's clock, which may be wrong.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, cast

from ..errors import LockError, StorageError
from ..locations import SCHEME, S3Location, parse_location, redact
from .base import ObjectInfo

if TYPE_CHECKING:
    from botocore.client import BaseClient

__all__ = ["MIN_PART_SIZE", "S3Storage", "part_size_for"]

log = logging.getLogger(__name__)

MIN_PART_SIZE = 8 << 20
MAX_PARTS = 10_000
# Parts are sized for this many, leaving room for an estimate that falls short.
_PLANNED_PARTS = 9_000
LOCK_NAME = ".obs-backup.lock"
CLAIM_PREFIX = ".obs-backup."
CLAIM_SUFFIX = ".claim"
WRITING_SUFFIX = ".writing"
# The object metadata (x-amz-meta-obs-backup-id) that carries an object's mark.
MARK_METADATA = "obs-backup-id"
DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_GRACE_SECONDS = 3600.0
_POLL_SECONDS = 0.5
_LARGE_PART = 32 << 20
# What a call to the store raises when it fails (not found, refused, unreachable, ...).
_CALL_FAILED = (OSError, StorageError)
_NO_SUCH_ETAG = '"00000000000000000000000000000000"'
_READ_ATTEMPTS = 5


def part_size_for(size_hint: int | None) -> int:
    """Given an estimate of an object's size, return the part size for uploading it:
    equal parts (some stores demand it), at least 8 MiB, and few enough that the
    estimate fits in 9,000 of the 10,000 parts a multipart upload may have."""
    if not size_hint:
        return MIN_PART_SIZE
    wanted = math.ceil(size_hint / _PLANNED_PARTS)
    return max(MIN_PART_SIZE, -(-wanted // (1 << 20)) * (1 << 20))


def _first(*values: float | None) -> float:
    return next(value for value in values if value is not None)


def _seconds(value: object) -> float:
    """A number of seconds from a record, or 0 if it holds none."""
    return float(value) if isinstance(value, int | float) and 0 <= value < 1e9 else 0.0


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Errors:
    """Turning the client's exceptions into this library's (see ``S3Storage._call``)."""

    @staticmethod
    def code(exc: BaseException) -> tuple[str, int]:
        response = getattr(exc, "response", None) or {}
        error = response.get("Error", {})
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return str(error.get("Code", "")), status


def _is_precondition(exc: BaseException) -> bool:
    code, status = _Errors.code(exc)
    # 409 ConditionalRequestConflict: another conditional write to the key is under way.
    return status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict")


class MissingBucket(StorageError):
    """The location's bucket does not exist."""


class _WrongRange(StorageError):
    """The store answered a ranged read with other bytes than asked for."""


def _is_missing(exc: BaseException) -> bool:
    code, status = _Errors.code(exc)
    return status == 404 or code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload")


class S3Storage:
    """Backups kept as objects under one prefix of a bucket (see the module docstring).

    ``client`` is a boto3 S3 client (made from the standard AWS settings when not
    given). ``lease_seconds``: how long a claim or the lock lives without renewal.
    ``grace_seconds``: how old a leftover (an archive without a manifest) must be before
    it is removed, and a backup before it is pruned. Both default to the location's
    (``?lease=``, ``?grace=``), else 300 s and 3600 s. ``part_size`` fixes the size of
    upload parts (default: from the size estimate, see ``part_size_for``).
    """

    manifest_commits = True

    def __init__(
        self,
        location: S3Location | str,
        *,
        client: BaseClient | None = None,
        lease_seconds: float | None = None,
        grace_seconds: float | None = None,
        part_size: int | None = None,
        max_in_flight: int = 2,
        retries: int = 5,
        read_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        hostname: str | None = None,
    ) -> None:
        self.s3 = location if isinstance(location, S3Location) else parse_location(location)
        self.lease_seconds = _first(lease_seconds, self.s3.lease_seconds, DEFAULT_LEASE_SECONDS)
        self.grace_seconds = _first(grace_seconds, self.s3.grace_seconds, DEFAULT_GRACE_SECONDS)
        self.part_size = part_size
        self.max_in_flight = max(1, max_in_flight)
        self.hostname = hostname or socket.gethostname()
        self._retries = retries
        self._timeouts = (connect_timeout, read_timeout)
        self._client = client
        self._client_ready = False
        self._client_lock = threading.Lock()
        self._conditions_checked = False
        self._server_offset: float | None = None
        self._held: list[_Lease] = []  # the leases this process holds on the location

    # --- the connection --------------------------------------------------------------

    @property
    def client(self) -> BaseClient:
        """The S3 client, made on first use from the standard AWS settings."""
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            if not self._client_ready:
                _sign_with_known_digest(self._client)
                self._client_ready = True
            return self._client

    def _make_client(self) -> BaseClient:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(region_name=self.s3.region)
        config = Config(
            # Checksums are ours to send (SHA-256, which the server checks), and only
            # what a store requires is sent besides: stores other than AWS refuse the
            # CRC trailers newer clients add by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "max_attempts": self._retries},
            connect_timeout=self._timeouts[0],
            read_timeout=self._timeouts[1],
            max_pool_connections=self.max_in_flight + 4,
            # Stores other than AWS are named by an endpoint, often an address with no
            # bucket subdomains: name the bucket in the path there.
            s3={"addressing_style": "path"} if self._custom_endpoint() else None,
        )
        return session.client(
            "s3",
            endpoint_url=self.s3.endpoint_url,
            region_name=session.region_name or "us-east-1",
            config=config,
        )

    def _custom_endpoint(self) -> bool:
        return bool(self.s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))

    def _call(self, operation: str, name: str | None = None, **params: Any) -> dict[str, Any]:
        """Call one S3 operation; raise FileNotFoundError, FileExistsError (a failed
        condition), PermissionError or StorageError, each naming the object."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = self.describe(name) if name is not None else str(self.s3)
        try:
            response = cast(dict[str, Any], getattr(self.client, operation)(Bucket=self.s3.bucket, **params))
        except ClientError as exc:
            code, status = _Errors.code(exc)
            message = exc.response.get("Error", {}).get("Message") or code
            if code == "NoSuchBucket":
                raise MissingBucket(f"{self.s3}: no such bucket {self.s3.bucket!r}", str(self.s3)) from exc
            if _is_missing(exc):
                raise FileNotFoundError(2, "no such object", where) from exc
            if _is_precondition(exc):
                raise FileExistsError(17, f"condition failed ({code or status})", where) from exc
            if code in ("AccessDenied", "Forbidden", "403") or status == 403:
                raise PermissionError(13, f"access denied ({message})", where) from exc
            if code == "BadDigest" or code.startswith("XAmzContent") or code == "InvalidDigest":
                raise StorageError(f"{where}: the object store rejected the data's checksum ({code})", where) from exc
            raise StorageError(f"{where}: {operation} failed: {code or status}: {message}", where) from exc
        except BotoCoreError as exc:
            if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"):
                raise StorageError(
                    f"{self.s3}: no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
                    str(self.s3),
                ) from exc
            raise StorageError(f"{where}: cannot reach the object store: {redact(str(exc))}", where) from exc
        self._note_server_time(response)
        return response

    def _note_server_time(self, response: dict[str, Any]) -> None:
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        if date:
            try:
                moment = parsedate_to_datetime(date)
            except (TypeError, ValueError):
                return
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)  # HTTP dates are UTC ("-0000" parses naive)
            self._server_offset = moment.timestamp() - time.time()

    def now(self) -> float:
        """The object store's clock (POSIX seconds), from its last response's Date."""
        if self._server_offset is None:
            self._call("head_bucket")
        return time.time() + (self._server_offset or 0.0)

    # --- where it is -----------------------------------------------------------------

    @property
    def location(self) -> str:
        return str(self.s3)

    def __repr__(self) -> str:
        return f"S3Storage({str(self.s3)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Storage) and other.s3 == self.s3

    def __hash__(self) -> int:
        return hash(self.s3)

    def describe(self, name: str) -> str:
        return f"{self.s3}/{name}" if self.s3.prefix else f"{SCHEME}{self.s3.bucket}/{name}"

    def local_path(self, name: str) -> None:
        return None

    def exists(self) -> bool:
        """Whether the bucket exists; raise StorageError if the store cannot tell (it
        cannot be reached, the credentials are refused): that is not a missing bucket."""
        try:
            self._call("head_bucket")
        except (FileNotFoundError, MissingBucket):
            return False
        except PermissionError as exc:
            raise StorageError(f"{self.s3}: {exc.strerror}", str(self.s3)) from exc
        return True

    def ensure(self) -> None:
        if not self.exists():
            params: dict[str, Any] = {}
            region = self.client.meta.region_name
            if region and region != "us-east-1" and not self.s3.endpoint_url:
                params["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self._call("create_bucket", **params)
            except (FileExistsError, PermissionError, StorageError) as exc:
                if not self.exists():
                    raise StorageError(f"{self.s3}: the bucket does not exist and cannot be created: {exc}") from exc
        self.check_conditional_writes()

    def check_conditional_writes(self) -> None:
        """Make sure the store honours ``If-None-Match`` and ``If-Match`` on PUT, and
        ``If-Match`` on DELETE (once per storage); raise StorageError if it ignores
        them, for then neither claims nor the lock would mean anything."""
        if self._conditions_checked:
            return
        probe = f"{CLAIM_PREFIX}probe-{uuid.uuid4().hex}"
        key = self.s3.key(probe)
        ignored = None
        try:
            token = uuid.uuid4().hex
            self._create_own(key, json.dumps({"token": token}).encode(), token, probe)
            # Each must be refused (412): the probe exists, and its ETag is not this one.
            attempts: tuple[tuple[str, Callable[[], object]], ...] = (
                ("If-None-Match: *", lambda: self._put(key, b"2", if_none_match=True, name=probe)),
                ("If-Match", lambda: self._put(key, b"3", if_match=_NO_SUCH_ETAG, name=probe)),
                ("If-Match on deletes", lambda: self._call("delete_object", probe, Key=key, IfMatch=_NO_SUCH_ETAG)),
            )
            for condition, attempt in attempts:
                try:
                    attempt()
                except FileExistsError:
                    continue
                ignored = condition
                break
        except StorageError as exc:
            if "NotImplemented" in str(exc):
                ignored = "conditional writes"
            else:
                raise
        finally:
            try:
                self._call("delete_object", probe, Key=key)
            except _CALL_FAILED:
                pass
        if ignored is not None:
            raise StorageError(
                f"{self.s3}: the object store does not honour {ignored} on writes; without it two writers "
                "could take the same backup id and the lock would not lock, so it cannot be used",
                str(self.s3),
            )
        self._conditions_checked = True

    # --- names -----------------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        if not name or "/" in name or "\x00" in name or name.startswith("."):
            raise StorageError(f"{name!r}: object names may not be empty, contain '/' or start with '.'")

    # --- listing and reading ---------------------------------------------------------

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            params: dict[str, Any] = {"Prefix": self.s3.key(prefix), "Delimiter": "/"}
            if token:
                params["ContinuationToken"] = token
            response = self._call("list_objects_v2", **params)
            yield from response.get("Contents", [])
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not token:
                return

    def _name(self, key: str) -> str:
        return key[len(self.s3.key("")) :]

    def list_objects(self) -> list[ObjectInfo]:
        objects = []
        for item in self._list(""):
            name = self._name(item["Key"])
            if name and not name.startswith(".") and "/" not in name:
                objects.append(ObjectInfo(name, int(item["Size"]), item["LastModified"].timestamp()))
        return sorted(objects, key=lambda info: info.name)

    def stat(self, name: str) -> ObjectInfo:
        self._check_name(name)
        response = self._call("head_object", name, Key=self.s3.key(name))
        return ObjectInfo(name, int(response["ContentLength"]), response["LastModified"].timestamp())

    def _head(self, name: str) -> dict[str, Any]:
        return self._call("head_object", name, Key=self.s3.key(name))

    def open_read(self, name: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        if not name or "/" in name or name.startswith("."):
            raise FileNotFoundError(2, "not an object name", self.describe(name))
        head = self._head(name)
        size = int(head["ContentLength"])
        end = size if length is None else min(size, offset + length)
        return cast(BinaryIO, _S3Reader(self, name, head["ETag"], offset, max(end, offset)))

    # --- writing ---------------------------------------------------------------------

    def _put(
        self,
        key: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        name: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        params: dict[str, Any] = {"Key": key, "Body": data, "ChecksumSHA256": _b64(hashlib.sha256(data).digest())}
        params.update(extra or {})
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if if_match is not None:
            params["IfMatch"] = if_match
        return str(self._call("put_object", name or self._name(key), **params)["ETag"])

    def _create_own(self, key: str, body: bytes, token: str, name: str) -> str:
        """Create a small record of ours (a claim, the lease) with ``If-None-Match: *``;
        return its ETag. A refusal is checked: if the record there carries our
        ``token``, it is ours (the first attempt landed and its answer was lost, and the
        client's retry was refused), else raise FileExistsError."""
        try:
            return self._put(key, body, if_none_match=True, name=name)
        except FileExistsError:
            try:
                response = self._call("get_object", name, Key=key)
                there = json.loads(response["Body"].read(1 << 16))
                response["Body"].close()
            except (*_CALL_FAILED, ValueError):
                raise FileExistsError(17, "already exists", self.describe(name)) from None
            if isinstance(there, dict) and there.get("token") == token:
                return str(response["ETag"])
            raise

    def _claim_key(self, key: str, suffix: str = CLAIM_SUFFIX) -> str:
        return self.s3.key(f"{CLAIM_PREFIX}{key}{suffix}")

    def begin(
        self, name: str, claim: str | None = None, size_hint: int | None = None, mark: str | None = None
    ) -> _S3Upload:
        self._check_name(name)
        if claim is not None:
            self._check_name(claim)
        if problem := self._lock_problem():
            raise StorageError(f"{self.s3}: {problem}", str(self.s3))
        # The claim on the key (the backup id, or the name itself), and a second one on
        # the name: two writers of one name never upload at once, so a completion is
        # never raced, even on a store whose conditional completion is not atomic.
        held = []
        try:
            for key, suffix in ((claim or name, CLAIM_SUFFIX), (name, WRITING_SUFFIX)):
                held.append(_Claim(self, key, name, suffix))
                held[-1].create()
            taken = self._exists(name)
            if not taken and claim is not None:
                taken = any(info["Key"] != self.s3.key(name) for info in self._list(claim + "."))
            if taken:
                raise FileExistsError(17, "already exists", self.describe(name))
        except BaseException:
            for claim_object in held:
                claim_object.release()
            raise
        return _S3Upload(self, name, held, self.part_size or part_size_for(size_hint), mark)

    def _exists(self, name: str) -> bool:
        try:
            self._head(name)
        except FileNotFoundError:
            return False
        return True

    def marked(self, name: str) -> str | None:
        self._check_name(name)
        value = self._head(name).get("Metadata", {}).get(MARK_METADATA)
        return None if value is None else str(value)

    def claimed(self, key: str) -> bool:
        try:
            self._call("head_object", key, Key=self._claim_key(key))
        except FileNotFoundError:
            return False
        return True

    def delete(self, name: str) -> None:
        self._check_name(name)
        if problem := self._lock_problem():
            raise StorageError(f"{self.s3}: {problem}", str(self.s3))
        etag = self._head(name)["ETag"]
        try:
            self._call("delete_object", name, Key=self.s3.key(name), IfMatch=etag)
        except FileExistsError:
            raise FileExistsError(17, "replaced while being removed; left alone", self.describe(name)) from None

    def clean_partials(self) -> list[str]:
        """Abort the uploads and remove the claims of writers that stopped renewing them
        a lease ago (the longer of ours and theirs), including uploads they started but
        had not yet named in their claims. Uploads our claims never named are another
        program's, and are left alone."""
        removed = []
        live_uploads: set[str] = set()
        live_objects: set[str] = set()
        claims = [
            item
            for item in self._list(CLAIM_PREFIX)
            if self._name(item["Key"]).endswith((CLAIM_SUFFIX, WRITING_SUFFIX))
        ]
        now = self.now()
        stale_objects: set[str] = set()
        for item in claims:
            hidden = self._name(item["Key"])
            try:
                body = self._read_small(item["Key"], hidden)
                record = json.loads(body)
                if record.get("obs-backup") != "claim":
                    continue  # not a claim of ours, whatever its name says
            except (*_CALL_FAILED, ValueError, AttributeError):
                continue
            # Judged by the longer of our lease and its writer's, which may differ.
            lease = max(self.lease_seconds, _seconds(record.get("lease")))
            name = record.get("object")
            if now - item["LastModified"].timestamp() <= lease:
                live_uploads.add(str(record.get("upload_id")))
                live_objects.add(str(name))
                continue
            upload_id = record.get("upload_id")
            try:
                # Only if still the same claim: a writer that renewed it meanwhile is alive.
                self._call("delete_object", hidden, Key=item["Key"], IfMatch=item["ETag"])
            except (FileExistsError, FileNotFoundError):
                continue
            if isinstance(name, str) and name and "/" not in name:
                stale_objects.add(name)
                if upload_id:
                    self._abort_upload(name, str(upload_id))
            if hidden.endswith(CLAIM_SUFFIX):
                removed.append(hidden)  # one line per dead writer: its name lock goes with it
        # An upload a dead writer started before its claim could name it: only for the
        # names our own dead writers' claims name, never another program's uploads.
        if stale_objects:
            for upload in self._uploads():
                name = self._name(upload["Key"])
                if name not in stale_objects or name in live_objects or upload["UploadId"] in live_uploads:
                    continue
                self._abort_upload(name, upload["UploadId"])
                removed.append(f"{name} (upload {upload['UploadId'][:12]})")
        return removed

    def _uploads(self) -> Iterator[dict[str, Any]]:
        marker: dict[str, Any] = {}
        while True:
            response = self._call("list_multipart_uploads", Prefix=self.s3.key(""), Delimiter="/", **marker)
            yield from response.get("Uploads", [])
            if not response.get("IsTruncated"):
                return
            marker = {"KeyMarker": response.get("NextKeyMarker"), "UploadIdMarker": response.get("NextUploadIdMarker")}

    def _abort_upload(self, name: str, upload_id: str) -> None:
        try:
            self._call("abort_multipart_upload", name, Key=self.s3.key(name), UploadId=upload_id)
        except FileNotFoundError:
            pass  # completed or aborted already

    def _read_small(self, key: str, name: str) -> bytes:
        response = self._call("get_object", name, Key=key)
        body = response["Body"]
        try:
            return cast(bytes, body.read(1 << 20))
        finally:
            body.close()

    # --- records ---------------------------------------------------------------------

    def read_record(self, name: str) -> bytes | None:
        """Return the record, or None if there is none; raise StorageError if it cannot
        be read (then nothing may be written over it as if it were empty)."""
        try:
            response = self._call("get_object", name, Key=self.s3.key(name))
        except (FileNotFoundError, MissingBucket):
            return None
        except PermissionError as exc:
            raise StorageError(f"{self.describe(name)}: {exc.strerror}", self.describe(name)) from exc
        body = response["Body"]
        try:
            return cast(bytes, body.read())
        except Exception as exc:
            raise StorageError(f"{self.describe(name)}: cannot read: {exc}", self.describe(name)) from exc
        finally:
            body.close()

    def write_record(self, name: str, data: bytes) -> None:
        if not name.startswith(".") or "/" in name or "\x00" in name or name in (".", ".."):
            raise StorageError(f"{name!r}: a record's name starts with '.' and has no '/'")
        self._put(self.s3.key(name), bytes(data), name=name)

    # --- the lock --------------------------------------------------------------------

    def lock(
        self,
        timeout: float = 0.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> _LockContext:
        return _LockContext(self, timeout, sleep, monotonic)

    def _lock_problem(self) -> str | None:
        """Why the lock this process took may no longer be its own, or None."""
        return next((problem for lease in list(self._held) if (problem := lease.problem())), None)


def _sign_with_known_digest(client: BaseClient) -> None:
    """Over plain HTTP the request signature covers the body's SHA-256; every body we
    send already carries that digest (as ``x-amz-checksum-sha256``), so it is reused
    instead of hashed a second time."""

    def reuse(request: Any, **_: Any) -> None:
        checksum = request.headers.get("x-amz-checksum-sha256")
        if checksum and "X-Amz-Content-SHA256" not in request.headers:
            request.headers["X-Amz-Content-SHA256"] = base64.b64decode(checksum).hex()

    client.meta.events.register("before-sign.s3.PutObject", reuse)
    client.meta.events.register("before-sign.s3.UploadPart", reuse)


class _Claim:
    """A writer's claim on a key (``.claim``) or on the name it writes (``.writing``):
    created once, renewed while the writer lives."""

    def __init__(self, storage: S3Storage, key: str, name: str, suffix: str = CLAIM_SUFFIX) -> None:
        self.storage = storage
        self.key = key
        self.name = name
        self.object_key = storage._claim_key(key, suffix)
        self.hidden = f"{CLAIM_PREFIX}{key}{suffix}"
        self.etag: str | None = None
        self.upload_id: str | None = None
        self.since = _now_iso()
        self.token = uuid.uuid4().hex
        self.lost: str | None = None
        self.renewed = time.monotonic()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        record = {
            "obs-backup": "claim",
            "object": self.name,
            "host": self.storage.hostname,
            "pid": os.getpid(),
            "since": self.since,
            "lease": self.storage.lease_seconds,
            "token": self.token,
            "upload_id": self.upload_id,
        }
        return json.dumps(record).encode()

    def create(self) -> None:
        try:
            self.etag = self.storage._create_own(self.object_key, self._body(), self.token, self.hidden)
        except FileExistsError:
            what = (
                "being written by another writer"
                if self.hidden.endswith(WRITING_SUFFIX)
                else "claimed by another writer"
            )
            raise FileExistsError(17, f"{what} ({self.key})", self.storage.describe(self.name)) from None
        self._thread = threading.Thread(target=self._renew_loop, name=f"claim {self.key}", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        """Write the claim again (with the upload's id, if any), if it is still ours."""
        with self._guard:
            if self.etag is None or self.lost:
                return
            try:
                self.etag = self.storage._put(self.object_key, self._body(), if_match=self.etag, name=self.hidden)
                self.renewed = time.monotonic()
            except (FileExistsError, FileNotFoundError):
                self.lost = "its claim was taken over (the writer was too slow to renew it)"
            except _CALL_FAILED as exc:
                log.warning("%s: cannot renew claim: %s", self.storage.describe(self.name), exc)
                if time.monotonic() - self.renewed > self.storage.lease_seconds:
                    # A clean-up may have taken it for a dead writer's by now.
                    self.lost = f"its claim could not be renewed for {self.storage.lease_seconds:g}s"

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.storage.lease_seconds / 5):
            try:
                self.renew()
            except Exception:  # a bug must not end the renewals silently
                log.exception("%s: renewing the claim failed", self.storage.describe(self.name))

    def problem(self) -> str | None:
        """Why this claim may no longer be its writer's, or None: taken over, or not
        renewed for a whole lease (the process was stopped, the network was down), so
        that a clean-up may have taken it for a dead writer's."""
        if self.lost:
            return self.lost
        if self.etag is not None and time.monotonic() - self.renewed > self.storage.lease_seconds:
            return f"its claim was not renewed for {self.storage.lease_seconds:g}s"
        return None

    def release(self) -> None:
        self._stop.set()
        with self._guard:
            etag, self.etag = self.etag, None
        if etag is None:
            return
        try:
            self.storage._call("delete_object", self.hidden, Key=self.object_key, IfMatch=etag)
        except _CALL_FAILED:
            pass  # taken over or unreachable: stale soon, then clean_partials's

    def abandon(self) -> None:
        """Stop renewing without releasing (what a killed writer leaves)."""
        self._stop.set()
        with self._guard:
            self.etag = None


@dataclass
class _Part:
    number: int
    future: Future[tuple[str, bytes]]  # its ETag and SHA-256, once sent


@dataclass
class _S3Upload:
    """An object being written to an S3Storage (see the module docstring)."""

    storage: S3Storage
    name: str
    claims: list[_Claim]
    part_size: int
    mark: str | None = None
    _part: bytearray | None = None  # the part being filled, allocated whole
    _fill: int = 0
    _parts: list[_Part] = field(default_factory=list)
    _pending: deque[Future[tuple[str, bytes]]] = field(default_factory=deque)
    _upload_id: str | None = None
    _pool: ThreadPoolExecutor | None = None
    _written: int = 0
    _done: bool = False

    @property
    def closed(self) -> bool:
        return self._done

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise ValueError(f"{self.storage.describe(self.name)}: write to a finished upload")
        view = memoryview(data).cast("B")
        total = len(view)
        self._written += total
        while view:
            if self._part is None:
                # Whole, once: each byte is copied into it and nowhere else (the
                # pages not yet written are not even allocated by the kernel).
                self._part, self._fill = bytearray(self.part_size), 0
            taken = min(self.part_size - self._fill, len(view))
            self._part[self._fill : self._fill + taken] = view[:taken]
            self._fill += taken
            view = view[taken:]
            if self._fill == self.part_size:
                full, self._part = self._part, None
                self._send(full)
        return total

    def flush(self) -> None:
        """Parts go out as they fill; a partial part cannot be sent early."""

    def _rest(self) -> bytearray:
        """The bytes written since the last full part (and no more part being filled)."""
        rest = self._part if self._part is not None else bytearray()
        del rest[self._fill :]
        self._part, self._fill = None, 0
        return rest

    def _send(self, piece: bytearray) -> None:
        storage = self.storage
        if self._claim_lost():
            self._fail(f"{storage.describe(self.name)}: {self._claim_lost()}")
        if self._upload_id is None:
            response = storage._call(
                "create_multipart_upload",
                self.name,
                Key=storage.s3.key(self.name),
                ChecksumAlgorithm="SHA256",
                **self._metadata(),
            )
            self._upload_id = str(response["UploadId"])
            for claim in self.claims:
                claim.upload_id = self._upload_id
                claim.renew()  # the claim now names the upload, for whoever cleans up after us
            self._pool = ThreadPoolExecutor(storage.max_in_flight, thread_name_prefix="upload")
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            self._fail(
                f"{storage.describe(self.name)}: larger than {MAX_PARTS} parts of {self.part_size >> 20} MiB; "
                "the size estimate fell short"
            )
        # Bounded memory: wait for the oldest parts while too many are on their way
        # (one only, when parts are large: a source of terabytes).
        in_flight = storage.max_in_flight if self.part_size <= _LARGE_PART else 1
        while self._pending and (len(self._pending) >= in_flight or self._pending[0].done()):
            self._pending.popleft().result()  # raises the part's failure, if it failed
        assert self._pool is not None
        future = self._pool.submit(self._upload_part, number, piece)
        self._parts.append(_Part(number, future))
        self._pending.append(future)

    def _upload_part(self, number: int, piece: bytearray) -> tuple[str, bytes]:
        """Send one part (in a worker thread, where hashing it runs beside the writer)."""
        digest = hashlib.sha256(piece).digest()
        response = self.storage._call(
            "upload_part",
            self.name,
            Key=self.storage.s3.key(self.name),
            UploadId=self._upload_id,
            PartNumber=number,
            Body=piece,
            ChecksumSHA256=_b64(digest),
        )
        return str(response["ETag"]), digest

    def _metadata(self) -> dict[str, Any]:
        return {} if self.mark is None else {"Metadata": {MARK_METADATA: self.mark}}

    def _claim_lost(self) -> str | None:
        return next((problem for claim in self.claims if (problem := claim.problem())), None)

    def _release(self) -> None:
        for claim in reversed(self.claims):
            claim.release()

    def _fail(self, message: str) -> NoReturn:
        raise StorageError(message, self.storage.describe(self.name))

    def commit(self) -> None:
        storage = self.storage
        where = storage.describe(self.name)
        if self._done:
            raise StorageError(f"{where}: already committed or aborted", where)
        try:
            if problem := storage._lock_problem() or self._claim_lost():
                self._fail(f"{where}: not committed: {problem}")
            if self._upload_id is None:
                data = bytes(self._rest())
                expected = _b64(hashlib.sha256(data).digest())
                try:
                    storage._put(
                        storage.s3.key(self.name), data, if_none_match=True, name=self.name, extra=self._metadata()
                    )
                except FileExistsError:
                    # An object sent whole has its MD5 for ETag, on stores that do not
                    # report the checksum back.
                    if not self._holds(expected, f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'):
                        raise
            else:
                if self._fill or not self._parts:
                    self._send(self._rest())
                sent = [(p.number, *p.future.result()) for p in self._parts]
                parts = [
                    {"PartNumber": number, "ETag": etag, "ChecksumSHA256": _b64(digest)}
                    for number, etag, digest in sent
                ]
                if problem := storage._lock_problem() or self._claim_lost():
                    self._fail(f"{where}: not committed: {problem}")
                expected = _b64(hashlib.sha256(b"".join(digest for _, _, digest in sent)).digest())
                try:
                    storage._call(
                        "complete_multipart_upload",
                        self.name,
                        Key=storage.s3.key(self.name),
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": parts},
                        IfNoneMatch="*",
                    )
                except (FileExistsError, FileNotFoundError):
                    if not self._holds(expected):
                        raise
                self._upload_id = None  # completed: nothing left to abort
            self._confirm(expected)
        except FileExistsError:
            self.abort()
            raise FileExistsError(17, "already exists", where) from None
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._shutdown()
        self._release()

    def _holds(self, expected: str, etag: str | None = None) -> bool:
        """Whether the object under the name is already the one sent: the first
        attempt landed, its answer was lost, and the client's retry was refused (the
        name already taken) or found the upload gone (completed). Only this writer
        can have written the name meanwhile: it holds the name's claim."""
        try:
            head = self.storage._call(
                "head_object", self.name, Key=self.storage.s3.key(self.name), ChecksumMode="ENABLED"
            )
        except _CALL_FAILED:
            return False
        checksum = str(head.get("ChecksumSHA256") or "")
        if int(head["ContentLength"]) != self._written:
            return False
        if checksum:
            return checksum.split("-")[0] == expected
        return etag is not None and head.get("ETag") == etag

    def _confirm(self, expected: str) -> None:
        """Read back what the store holds now under the name; if it is not what was
        sent (a size or checksum that differs), remove it and fail. (The name is ours:
        no other writer can have written it meanwhile, see ``.writing``.)"""
        storage = self.storage
        try:
            head = storage._call("head_object", self.name, Key=storage.s3.key(self.name), ChecksumMode="ENABLED")
        except FileNotFoundError:
            self._fail(f"{storage.describe(self.name)}: gone right after the object store accepted it")
        except _CALL_FAILED as exc:
            # The store accepted the data, checking each part's SHA-256 as it came:
            # not being able to ask again does not make it less committed.
            log.warning("%s: committed; cannot read back its size and checksum: %s", storage.describe(self.name), exc)
            return
        size = int(head["ContentLength"])
        checksum = str(head.get("ChecksumSHA256") or "")
        problem = None
        if size != self._written:
            problem = f"holds {size} bytes, {self._written} were sent"
        elif checksum and checksum.split("-")[0] != expected:
            problem = f"reports SHA-256 {checksum}, expected {expected}"
        if problem is not None:
            try:
                storage._call("delete_object", self.name, Key=storage.s3.key(self.name), IfMatch=head["ETag"])
            except _CALL_FAILED:
                pass
            self._fail(f"{storage.describe(self.name)}: the object store {problem}; the upload was discarded")

    def _shutdown(self) -> None:
        if self._pool is not None:
            for part in self._parts:
                part.future.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
        self._part, self._fill = None, 0
        self._parts = []
        self._pending.clear()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._shutdown()
        if self._upload_id is not None:
            try:
                self.storage._abort_upload(self.name, self._upload_id)
            except _CALL_FAILED as exc:
                log.warning("%s: cannot abort the upload (the next clean-up will): %s", self.name, exc)
            self._upload_id = None
        self._release()

    def abandon(self) -> None:
        """Stop as a killed writer would: nothing aborted, nothing released (for tests)."""
        self._done = True
        for claim in self.claims:
            claim.abandon()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _S3Reader(io.RawIOBase):
    """A ranged read of one object that resumes where it broke off.

    A connection lost mid-read is picked up again with a ranged GET of the rest, on
    the condition that the object is still the one first read (``If-Match``)."""

    def __init__(self, storage: S3Storage, name: str, etag: str, start: int, end: int) -> None:
        super().__init__()
        self._storage = storage
        self._name = name
        self._etag = etag
        self._position = start
        self._end = end
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        response = self._storage._call(
            "get_object",
            self._name,
            Key=self._storage.s3.key(self._name),
            Range=f"bytes={self._position}-{self._end - 1}",
            IfMatch=self._etag,
        )
        given = str(response.get("ContentRange") or "")
        if not given.startswith(f"bytes {self._position}-"):
            response["Body"].close()
            # A store (or a proxy) that ignores Range sends the object from its start:
            # those bytes must not be taken for the ones asked for.
            raise _WrongRange(
                f"{self._storage.describe(self._name)}: asked for bytes from {self._position}, "
                f"the object store sent {given or 'the whole object'}",
                self._name,
            )
        self._body = response["Body"]

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._end - self._position)
        if wanted <= 0:
            return 0
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        for attempt in range(_READ_ATTEMPTS):
            try:
                if self._body is None:
                    self._open()
                data = self._body.read(wanted)
                if data:
                    break
                raise ConnectionError("the connection closed before the object's end")
            except FileExistsError:
                raise StorageError(
                    f"{self._storage.describe(self._name)}: the object changed while it was read", self._name
                ) from None
            except _WrongRange:
                raise
            except (BotoCoreError, HTTPError, ConnectionError, TimeoutError, StorageError) as exc:
                self._drop()
                if attempt + 1 == _READ_ATTEMPTS:
                    raise StorageError(
                        f"{self._storage.describe(self._name)}: read broke off at byte {self._position}: {exc}",
                        self._name,
                    ) from exc
                log.info("%s: read broke off (%s); resuming", self._storage.describe(self._name), exc)
                time.sleep(min(0.2 * 2**attempt, 5.0))
        count = len(data)
        view[:count] = data
        self._position += count
        return count

    def _drop(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:
                pass
            self._body = None

    def close(self) -> None:
        self._drop()
        super().close()


class _LockContext:
    """``with storage.lock(timeout):``: take the lease, keep renewing it, give it back."""

    def __init__(
        self, storage: S3Storage, timeout: float, sleep: Callable[[float], None], monotonic: Callable[[], float]
    ) -> None:
        self._lease = _Lease(storage)
        self._timeout = timeout
        self._sleep = sleep
        self._monotonic = monotonic

    def __enter__(self) -> None:
        self._lease.acquire(self._timeout, self._sleep, self._monotonic)

    def __exit__(self, *exc: object) -> None:
        self._lease.release()


class _Lease:
    """The location's lock, as a lease object (``.obs-backup.lock``).

    Taken with a conditional create; renewed every ``lease_seconds / 5`` with a PUT on
    the condition that its ETag is still the one this holder wrote; stale once not
    renewed for ``lease_seconds`` by the server's clock, and then taken over with the
    same compare-and-swap, so that of several waiters exactly one gets it. A holder
    whose renewal fails because another took the lease over learns it, and the storage
    refuses its commits and deletes from then on.
    """

    def __init__(self, storage: S3Storage) -> None:
        self.storage = storage
        self.key = storage.s3.key(LOCK_NAME)
        self.etag: str | None = None
        self.since = ""
        self.token = uuid.uuid4().hex
        self.lost: str | None = None
        self.renewed = 0.0  # when the lease was last written (monotonic)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        record = {
            "obs-backup": "lock",
            "host": self.storage.hostname,
            "pid": os.getpid(),
            "since": self.since,
            "lease": self.storage.lease_seconds,
            "token": self.token,
        }
        return json.dumps(record).encode()

    def acquire(self, timeout: float, sleep: Callable[[float], None], monotonic: Callable[[], float]) -> None:
        storage = self.storage
        storage.check_conditional_writes()
        deadline = monotonic() + max(timeout, 0.0)
        while True:
            self.since = _now_iso()
            try:
                self.etag = storage._create_own(self.key, self._body(), self.token, LOCK_NAME)
                break
            except FileExistsError:
                pass
            holder, etag, age = self._holder()
            # Stale by the longer of our lease and its holder's, which may differ.
            if etag is not None and age > max(storage.lease_seconds, _seconds(holder.get("lease"))):
                try:
                    self.etag = storage._put(self.key, self._body(), if_match=etag, name=LOCK_NAME)
                    log.warning("%s: took over the lock of %s, not renewed for %.0fs", storage.s3, _who(holder), age)
                    break
                except (FileExistsError, FileNotFoundError):
                    pass  # another waiter took it first
            if monotonic() >= deadline:
                waited = f"after waiting {timeout:g}s" if timeout > 0 else "without waiting"
                pid = holder.get("pid")
                raise LockError(
                    f"{storage.s3}: backup location is locked by {_who(holder)} (since "
                    f"{_printable(holder.get('since', 'an unknown time'))}); gave up {waited}",
                    str(storage.s3),
                    holder_pid=pid if isinstance(pid, int) else None,
                )
            sleep(min(_POLL_SECONDS, max(deadline - monotonic(), 0.01)))
        storage._held.append(self)
        self.renewed = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="lock lease", daemon=True)
        self._thread.start()

    def _holder(self) -> tuple[dict[str, Any], str | None, float]:
        """Return the lease's record, its ETag and its age by the server's clock."""
        storage = self.storage
        try:
            response = storage._call("get_object", LOCK_NAME, Key=self.key)
        except FileNotFoundError:
            return {}, None, 0.0
        try:
            record = json.loads(response["Body"].read(1 << 16))
        except ValueError:
            record = {}
        finally:
            response["Body"].close()
        age = storage.now() - response["LastModified"].timestamp()
        return (record if isinstance(record, dict) else {}), str(response["ETag"]), age

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.storage.lease_seconds / 5):
            try:
                if not self.renew():
                    return
            except Exception:  # a bug must not end the renewals silently
                log.exception("%s: renewing the lock's lease failed", self.storage.s3)

    def lose(self, why: str) -> None:
        """Record that the lock is no longer this holder's: while it is held, the
        storage makes no commit and no delete."""
        self.lost = why
        log.error("%s: %s", self.storage.s3, why)

    def problem(self) -> str | None:
        """Why the lock may no longer be this holder's: taken over, or not renewed for a
        whole lease (the process was stopped, the network was down), or None."""
        if self.lost:
            return self.lost
        if self.etag is not None and time.monotonic() - self.renewed > self.storage.lease_seconds:
            return f"the lock's lease was not renewed for {self.storage.lease_seconds:g}s"
        return None

    def renew(self) -> bool:
        """Renew the lease if it is still this holder's; return False once it is not
        (then the storage refuses commits and deletes)."""
        etag = self.etag
        if etag is None:
            return False
        try:
            self.etag = self.storage._put(self.key, self._body(), if_match=etag, name=LOCK_NAME)
        except (FileExistsError, FileNotFoundError):
            self.etag = None
            self.lose("the lock was taken over by another process (its lease was not renewed in time)")
            return False
        except _CALL_FAILED as exc:
            log.warning("%s: cannot renew the lock's lease: %s", self.storage.s3, exc)
            if time.monotonic() - self.renewed > self.storage.lease_seconds:
                # Another process may have taken it over by now: act as if it had.
                self.etag = None
                self.lose(f"the lock's lease could not be renewed for {self.storage.lease_seconds:g}s")
                return False
            return True
        self.renewed = time.monotonic()
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self in self.storage._held:
            self.storage._held.remove(self)
        etag, self.etag = self.etag, None
        if etag is None:
            return
        try:
            self.storage._call("delete_object", LOCK_NAME, Key=self.key, IfMatch=etag)
        except _CALL_FAILED:
            pass  # taken over, or unreachable: it goes stale, and the next holder takes it over


def _who(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return f"host {_printable(holder.get('host', '?'))} pid {_printable(holder.get('pid', '?'))}"


def _printable(value: object) -> str:
    """A value from a record anyone with write access to the bucket could have written,
    made safe for a one-line message: no control characters, at most 100 characters."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text[:100]
