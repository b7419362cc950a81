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

__all__ = ["SCHEME", "S3Location", "as_location", "is_url", "parse_location", "with_endpoint"]

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


def parse_location(text: str, endpoint_url: str | None = None, region: str | None = None) -> S3Location:
    """Given ``s3://bucket/prefix``, optionally with ``?endpoint=URL&region=R`` and the
    times ``lease=SECONDS&grace=SECONDS``, return the location; raise ConfigError
    naming what is wrong with it."""
    parts = urlsplit(text)
    if not text.lower().startswith(parts.scheme.lower() + "://"):
        raise ConfigError(f"{text}: not a URL; an object store is named s3://bucket/prefix", text)
    if parts.scheme.lower() != "s3":
        raise ConfigError(f"{text}: unknown location scheme {parts.scheme + '://'!r}; use a directory or s3://", text)
    if "@" in parts.netloc:
        raise ConfigError(
            f"{_redact(text)}: credentials do not belong in the URL; use AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or a profile",
            _redact(text),
        )
    bucket = parts.netloc
    if not (3 <= len(bucket) <= 63) or not all(c.islower() or c.isdigit() or c in ".-" for c in bucket):
        raise ConfigError(f"{text}: {bucket!r} is not a bucket name (3-63 of a-z 0-9 . -)", text)
    components = [part for part in parts.path.split("/")]
    while components and components[0] == "":
        components.pop(0)
    while components and components[-1] == "":
        components.pop()
    if any(part in ("", ".", "..") or part.startswith(".") for part in components):
        raise ConfigError(f"{text}: the prefix may not have empty, '.' or '..' parts, or parts starting with '.'", text)
    seconds: dict[str, float] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("endpoint", "endpoint_url"):
            endpoint_url = value
        elif name == "region":
            region = value
        elif name in ("lease", "grace"):
            try:
                seconds[name] = float(value)
            except ValueError:
                seconds[name] = -1.0
            if not 0 <= seconds[name] < float("inf"):
                raise ConfigError(f"{text}: {name} must be a number of seconds, not {value!r}", text)
        else:
            raise ConfigError(f"{text}: unknown URL option {name!r} (known: endpoint, region, lease, grace)", text)
    if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
        raise ConfigError(f"{endpoint_url}: an endpoint URL starts with http:// or https://", endpoint_url)
    if seconds.get("lease") == 0:
        raise ConfigError(f"{text}: lease must be more than 0 seconds", text)
    return S3Location(
        bucket,
        "/".join(components),
        endpoint_url or None,
        region or None,
        lease_seconds=seconds.get("lease"),
        grace_seconds=seconds.get("grace"),
    )


def _redact(text: str) -> str:
    parts = urlsplit(text)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"


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
        return dataclasses.replace(value, endpoint_url=endpoint_url)
    return value
