"""A real S3-compatible server on loopback for ``s3://`` lake tests.

moto's standalone server (the one s3fs's own tests use) runs in a thread of
the test process, listening on 127.0.0.1 only. Its storage lives in the
process, so stopping and restarting the server on the same port simulates an
outage without losing what was stored before it.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

HOST = "127.0.0.1"
BUCKET = "alpha-lake"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class S3Server:
    """Start/stop a moto S3 server on a fixed loopback port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self._server = None

    def start(self, timeout: float = 15.0) -> None:
        from moto.server import ThreadedMotoServer

        deadline = time.monotonic() + timeout
        while True:
            try:
                self._server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)
                self._server.start()
                break
            except OSError:  # port still in TIME_WAIT after a stop
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self._wait_up(deadline)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _wait_up(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"moto server did not start on {self.endpoint}")


@contextmanager
def s3_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> Iterator[None]:
    """AWS_* variables pointing at ``endpoint`` (fake keys: moto accepts any)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A running server with bucket ``alpha-lake`` and the AWS env set; stopped after."""
    _reset_moto()  # a test that ran its own server may have left buckets behind
    server = S3Server()
    server.start()
    try:
        with s3_env(monkeypatch, server.endpoint):
            from storage.lake import s3_filesystem

            s3_filesystem().mkdir(BUCKET)
            yield server
    finally:
        server.stop()
        _reset_moto()


def _reset_moto() -> None:
    """Forget stored buckets so the next test starts empty."""
    try:
        from moto.backends import get_backend

        for backend in get_backend("s3").values():
            backend.reset()
    except Exception:  # noqa: BLE001 - best effort between tests
        pass
