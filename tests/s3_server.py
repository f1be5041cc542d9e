"""A real S3 API over HTTP for tests: moto's server as a subprocess on 127.0.0.1, driven through boto3.

``s3_server`` (one per session) starts it and points the standard AWS variables at it, so anything built
from the environment (``storage_from_settings``, a ``wanserve`` subprocess) uses it; ``s3_bucket`` is a
fresh bucket per test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from tests.processes import free_port, wait_until

ACCESS_KEY_ID = "AKIAWANSERVETEST0001"
SECRET_ACCESS_KEY = "wanserve-test-secret-never-in-messages"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint_url: str
    env: dict[str, str]  # the AWS variables that point a client (or a subprocess) at this server
    log: Path

    @cached_property
    def admin(self) -> Any:
        """A boto3 client of its own (not the one under test), for setting up and looking."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def new_bucket(self) -> str:
        name = f"wanserve-test-{uuid.uuid4().hex[:12]}"
        self.admin.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.admin.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@contextmanager
def running_moto(log_dir: Path, **server_env: str) -> Iterator[S3Server]:
    """moto's S3 server on a free port until the block ends; ``server_env`` is its own environment's extra
    (``INITIAL_NO_AUTH_ACTION_COUNT="0"``: signatures are checked)."""
    port = free_port()
    log = log_dir / f"moto-{port}.log"
    endpoint_url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        # A developer's ~/.aws must not change what the tests talk to.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env={**os.environ, **server_env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: process.poll() is not None or _listens(port), 60, "moto's S3 server")
        if process.poll() is not None:
            raise RuntimeError(f"moto's server exited with {process.returncode}:\n{log.read_text()}")
        yield S3Server(endpoint_url, env, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_moto(tmp_path_factory.mktemp("moto")) as server, pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            patch.delenv(name, raising=False)
        for name, value in server.env.items():
            patch.setenv(name, value)
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on the session's server."""
    return s3_server.new_bucket()
