"""Backup locations as users name them: a directory, or an object store's
``s3://bucket/prefix``. Parsing only; opening one is ``backup.storage.open_storage``'s.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigError

__all__ = [
    "SCHEME",
    "S3Location",
    "as_location",
    "check_endpoint",
    "is_url",
    "parse_location",
    "redact",
    "with_endpoint",
]

SCHEME = "s3://"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def is_url(text: object) -> bool:
    """Return whether a backup location names an object store (or tries to: ``s3:/x``,
    a slash short, is a malformed URL, not a directory named ``s3:``)."""
    return isinstance(text, str) and _URL.match(text) is not None


@dataclass(frozen=True)
class S3Location:
    """Where backups live in an object store. ``endpoint_url`` is for anything but AWS;
    unset, the standard AWS settings (``AWS_ENDPOINT_URL_S3``, profiles) apply."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    # How long a claim or the lock lives without renewal, and how old a leftover or a
    # backup must be before it is removed (None: the storage's defaults).
    lease_seconds: float | None = None
    grace_seconds: float | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def key(self, name: str) -> str:
        """Return the key an object (or a hidden name) has in the bucket."""
        return f"{self.prefix}/{name}" if self.prefix else name


# Bounds for ?lease= and ?grace=: a lease renewed many times a second, or never, is a
# mistake, not a setting.
LEASE_RANGE = (1.0, 86_400.0)
GRACE_RANGE = (0.0, 30 * 86_400.0)


def parse_location(text: str, endpoint_url: str | None = None, region: str | None = None) -> S3Location:
    """Given ``s3://bucket/prefix``, optionally with ``?endpoint=URL&region=R`` and the
    times ``lease=SECONDS&grace=SECONDS``, return the location; raise ConfigError
    naming what is wrong with it (never repeating a password it holds)."""
    shown = redact(text)
    parts = urlsplit(text)
    if not text.lower().startswith(parts.scheme.lower() + "://"):
        raise ConfigError(f"{shown}: not a URL; an object store is named s3://bucket/prefix", shown)
    if parts.scheme.lower() != "s3":
        raise ConfigError(f"{shown}: unknown location scheme {parts.scheme + '://'!r}; use a directory or s3://", shown)
    if "@" in parts.netloc:
        raise ConfigError(f"{shown}: credentials do not belong in the URL; {_CREDENTIALS}", shown)
    bucket = parts.netloc
    if not (3 <= len(bucket) <= 63) or not all(c.islower() or c.isdigit() or c in ".-" for c in bucket):
        raise ConfigError(f"{shown}: {bucket!r} is not a bucket name (3-63 of a-z 0-9 . -)", shown)
    components = parts.path.split("/")
    while components and components[0] == "":
        components.pop(0)
    while components and components[-1] == "":
        components.pop()
    if any(part in ("", ".", "..") or part.startswith(".") for part in components):
        raise ConfigError(
            f"{shown}: the prefix may not have empty, '.' or '..' parts, or parts starting with '.'", shown
        )
    seconds: dict[str, float] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("endpoint", "endpoint_url"):
            endpoint_url = value
        elif name == "region":
            region = value
        elif name in ("lease", "grace"):
            low, high = LEASE_RANGE if name == "lease" else GRACE_RANGE
            try:
                seconds[name] = float(value)
            except ValueError:
                seconds[name] = float("nan")
            if not low <= seconds[name] <= high:
                raise ConfigError(
                    f"{shown}: {name} must be a number of seconds from {low:g} to {high:g}, not {value!r}", shown
                )
        else:
            raise ConfigError(f"{shown}: unknown URL option {name!r} (known: endpoint, region, lease, grace)", shown)
    if endpoint_url is not None:
        check_endpoint(endpoint_url)
    return S3Location(
        bucket,
        "/".join(components),
        endpoint_url or None,
        region or None,
        lease_seconds=seconds.get("lease"),
        grace_seconds=seconds.get("grace"),
    )


_CREDENTIALS = "use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile"


def check_endpoint(endpoint_url: str) -> str:
    """Given an endpoint URL, return it; raise ConfigError (without repeating any
    password in it) if it is not an http(s) URL or carries credentials."""
    shown = redact(endpoint_url)
    if not endpoint_url.startswith(("http://", "https://")):
        raise ConfigError(f"{shown}: an endpoint URL starts with http:// or https://", shown)
    if "@" in urlsplit(endpoint_url).netloc:
        raise ConfigError(f"{shown}: credentials do not belong in the endpoint URL; {_CREDENTIALS}", shown)
    return endpoint_url


def redact(text: str) -> str:
    """Given a URL (or text holding URLs), return it without any ``user:password@``."""
    return re.sub(r"//[^/@\s?]*@", "//", text)


def as_location(value: str | os.PathLike[str] | S3Location) -> Path | S3Location:
    """Given a backup location as text or a path, return it as a directory's Path or an
    object store's S3Location; raise ConfigError for a URL that is not valid."""
    if isinstance(value, S3Location):
        return value
    if isinstance(value, str) and is_url(value):
        return parse_location(value)
    return Path(value)


def with_endpoint(value: Path | S3Location, endpoint_url: str | None) -> Path | S3Location:
    """Given a location, return it with ``endpoint_url`` if it is an object store's
    that names none of its own."""
    if isinstance(value, S3Location) and endpoint_url and value.endpoint_url is None:
        return dataclasses.replace(value, endpoint_url=check_endpoint(endpoint_url))
    return value
