"""The server does not load what a plain request never needs: Pillow (image variants are made
in worker processes), PyJWT (only Bearer tokens use it), Alembic (the schema is brought up
to date in a child process) and boto3 (only blobs in S3 need it). Each costs resident memory
in every server process from start to end. Pillow and PyJWT still load, and work, when a
request does need them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import images
from tests.conftest import ENGINES
from tests.servers import REPO_ROOT

# Top-level packages a server must not import until a request needs them.
LAZY = {"PIL", "jwt", "cryptography", "alembic", "mako", "boto3", "botocore", "s3transfer"}


@pytest.mark.parametrize("engine", ENGINES)
def test_server_loads_pillow_jwt_and_alembic_only_when_needed(engine: str, tmp_path: Path) -> None:
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(images.jpeg(320, 240))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    probe = subprocess.run(
        [sys.executable, "-m", "tests.integration.import_probe", engine, str(jpeg)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    steps = json.loads(probe.stdout.splitlines()[-1])

    assert not LAZY.intersection(steps["started"]), "loaded at start"
    assert steps["put_get"] == [201, 200, "hello"]
    assert not LAZY.intersection(steps["served"]), "loaded by a PUT and a GET"

    assert steps["thumbnail"] == [200, "image/jpeg"]
    assert "PIL" not in steps["thumbnailed"], "Pillow belongs in the image workers"

    assert steps["token"] == [200, 207]
    assert "jwt" in steps["tokens"]
