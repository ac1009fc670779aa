"""A disk with no room left: an upload gets 507 Insufficient Storage, and loses nothing.

The blob folder is a 1 MiB tmpfs, so the disk really fills up (ENOSPC from write(2), not a
mock). Mounting needs root and the right to mount; where that is missing the test skips with
the reason, also under CI (as the davfs2 test does): many CI machines cannot mount at all.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ENGINES
from tests.integration.test_dav_http import existing_node, version_numbers
from tests.servers import InprocServer, run_inproc_server

SIZE = "1m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 1 MiB file system of its own."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(params=ENGINES)
def server(
    request: pytest.FixtureRequest, tmp_path: Path, small_disk: Path
) -> Iterator[InprocServer]:
    blob_dir = str(small_disk / "blobs")
    with run_inproc_server(request.param, tmp_path, storage__blob_dir=blob_dir) as srv:
        yield srv


def test_an_upload_that_does_not_fit_on_the_disk_is_507_and_loses_nothing(
    server: InprocServer, small_disk: Path
) -> None:
    folder = server.fresh_dir("full")
    first = os.urandom(300 * 1024)
    assert server.request("PUT", f"{folder}doc.bin", body=first).status == 201

    too_big = os.urandom(2 * 1024 * 1024)
    refused = server.request("PUT", f"{folder}doc.bin", body=too_big)
    assert refused.status == 507, refused.body[:300]
    assert b"storage is full" in refused.body

    # The file is still the first upload, with one version; no partial bytes are left.
    got = server.request("GET", f"{folder}doc.bin")
    assert (got.status, got.body) == (200, first)
    assert version_numbers(server.application, existing_node(server, f"{folder}doc.bin").id) == [1]
    assert list((small_disk / "blobs" / "tmp").iterdir()) == []

    # A new file that does not fit is not created at all.
    new = server.request("PUT", f"{folder}new.bin", body=too_big)
    assert new.status == 507
    assert server.request("HEAD", f"{folder}new.bin").status == 404

    # Once there is room again, uploads work.
    small = os.urandom(10 * 1024)
    assert server.request("PUT", f"{folder}small.bin", body=small).status == 201
    assert server.request("GET", f"{folder}small.bin").body == small
