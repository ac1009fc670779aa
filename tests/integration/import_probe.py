"""Serve the application in this process as ``davserver serve`` does, make a few requests and
print, as JSON, which top-level modules were loaded after each step.

Run by ``test_lazy_imports`` as ``python -m tests.integration.import_probe ENGINE JPEG_FILE``,
in a process of its own so that nothing the test runner imported counts.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from davserver.cli import build_parser
from tests.servers import run_inproc_server


def loaded() -> list[str]:
    return sorted({name.partition(".")[0] for name in sys.modules})


def main(engine: str, jpeg: bytes) -> None:
    build_parser()  # `davserver serve` imports every command group as well, and migrates
    # the database in a child process
    steps: dict[str, object] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_inproc_server(engine, Path(tmp), migrate_in_child=True) as server,
    ):
        steps["started"] = loaded()

        folder = server.fresh_dir("imports")
        put = server.request("PUT", folder + "a.txt", b"hello")
        got = server.request("GET", folder + "a.txt")
        steps["put_get"] = [put.status, got.status, got.body.decode()]
        steps["served"] = loaded()

        server.request("PUT", folder + "photo.jpg", jpeg)
        thumbnail = server.request("GET", folder + "photo.jpg?thumbnail=64")
        steps["thumbnail"] = [thumbnail.status, thumbnail.headers.get("Content-Type")]
        steps["thumbnailed"] = loaded()

        credentials = json.dumps({"username": server.user, "password": server.password})
        issued = server.request("POST", "/api/v1/token", credentials.encode(), auth=False)
        token = json.loads(issued.body)["access_token"]
        bearer = {"Authorization": f"Bearer {token}", "Depth": "0"}
        listed = server.request("PROPFIND", "/files/", headers=bearer, auth=False)
        steps["token"] = [issued.status, listed.status]
        steps["tokens"] = loaded()
    print(json.dumps(steps))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]).read_bytes())
