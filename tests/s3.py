"""An S3-compatible object store for the tests: moto's server, a real HTTP endpoint speaking
the S3 protocol, run as a subprocess on a free port (``moto_server`` from the dev extra).

Each test gets a bucket of its own, emptied and removed afterwards. Without ``moto_server``
the S3 tests skip with the reason, unless the environment variable CI is set: then they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from davserver.blobstore.s3 import S3Location, make_client
from tests.servers import HOST, free_port

ACCESS_KEY = "davserver-test"
SECRET_KEY = "davserver-test-secret"
START_TIMEOUT = 30.0


def _moto_server() -> str | None:
    beside_python = Path(sys.executable).with_name("moto_server")
    return str(beside_python) if beside_python.exists() else shutil.which("moto_server")


@dataclass
class S3Endpoint:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop answering (a store that went away)."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextmanager
def run_s3_endpoint(tmp_dir: Path) -> Iterator[S3Endpoint]:
    """Start moto's S3 server."""
    program = _moto_server()
    if program is None:
        reason = "moto_server is not installed (pip install 'moto[s3,server]')"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the S3 tests must run: {reason}")
        pytest.skip(reason)
    port = free_port()
    url = f"http://{HOST}:{port}"
    log = tmp_dir / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [program, "-H", HOST, "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    endpoint = S3Endpoint(url, process)
    try:
        _wait_until_answering(url, process, log)
        yield endpoint
    finally:
        endpoint.stop()


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    client = make_client(location(url, "none"))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            client.list_buckets()
            return
        except Exception:  # not listening yet
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {url} within {START_TIMEOUT:.0f} s")


def location(endpoint: str, bucket: str, prefix: str = "") -> S3Location:
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        addressing_style="path",
    )


@contextmanager
def fresh_bucket(endpoint: str) -> Iterator[str]:
    """A new, empty bucket; emptied and removed afterwards."""
    bucket = f"davserver-{secrets.token_hex(6)}"
    client = make_client(location(endpoint, bucket))
    client.create_bucket(Bucket=bucket)
    try:
        yield bucket
    finally:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)


def server_env(endpoint: str, bucket: str) -> dict[str, str]:
    """The environment that puts a davserver's blobs in ``bucket``."""
    return {
        "DAVSERVER_STORAGE_BACKEND": "s3",
        "DAVSERVER_S3_BUCKET": bucket,
        "DAVSERVER_S3_ENDPOINT_URL": endpoint,
        "DAVSERVER_S3_REGION": "us-east-1",
        "DAVSERVER_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "DAVSERVER_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "DAVSERVER_S3_ADDRESSING_STYLE": "path",
    }
