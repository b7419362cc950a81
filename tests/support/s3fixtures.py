"""pytest fixtures for tests against real S3 servers on 127.0.0.1 (see :mod:`support.s3servers`).

Registered for the whole test tree by ``tests/conftest.py``. The servers are started
once per session, on first use, and a test that needs a bucket gets a new one, so tests
share a server but no state. SeaweedFS is a binary that may be missing or fail to start:
its tests are then skipped, with the reason (and the end of weed's log) both in the
skip summary (``-ra``) and in a warning, so lost coverage does not go unnoticed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from support.s3servers import FaultProxy, S3Server, ServerUnavailable, start_moto, start_seaweedfs

__all__ = [
    "ServerUnavailableWarning",
    "fault_proxy",
    "moto_bucket",
    "moto_server",
    "s3_env",
    "seaweedfs_bucket",
    "seaweedfs_server",
]


class ServerUnavailableWarning(UserWarning):
    """A server the tests wanted could not be started; the tests that need it were skipped."""


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """moto's S3 server, in a thread of this process, for the whole session."""
    with start_moto() as server:
        yield server


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS (``weed mini``) for the whole session, its data and log in a session
    directory; skips (and warns) when it is unavailable."""
    with ExitStack() as stack:
        try:
            server = stack.enter_context(start_seaweedfs(tmp_path_factory.mktemp("seaweedfs")))
        except ServerUnavailable as exc:
            warnings.warn(
                f"SeaweedFS unavailable, its tests are skipped: {exc.reason}", ServerUnavailableWarning, stacklevel=1
            )
            pytest.skip(f"SeaweedFS unavailable: {exc.reason}")
        yield server


@pytest.fixture
def moto_bucket(moto_server: S3Server) -> tuple[S3Server, str]:
    """moto's server and a new bucket on it."""
    return moto_server, moto_server.make_bucket()


@pytest.fixture
def seaweedfs_bucket(seaweedfs_server: S3Server) -> tuple[S3Server, str]:
    """SeaweedFS and a new bucket on it."""
    return seaweedfs_server, seaweedfs_server.make_bucket()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[S3Server], FaultProxy]]:
    """A factory: given a server, return a FaultProxy in front of it; all are closed after the test."""
    with ExitStack() as stack:

        def make(server: S3Server) -> FaultProxy:
            return stack.enter_context(FaultProxy(server))

        yield make


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[S3Server], dict[str, str]]:
    """A function: given a server, point this process's environment (and so its subprocesses)
    at it for the rest of the test, and return the variables set.

    Every other AWS_* variable (AWS_PROFILE, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, ...) is
    removed, so nothing of the developer's own AWS setup takes part.
    """

    def apply(server: S3Server) -> dict[str, str]:
        values = server.env()
        for name in list(os.environ):
            if name.startswith("AWS_") and name not in values:
                monkeypatch.delenv(name)
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return values

    return apply
