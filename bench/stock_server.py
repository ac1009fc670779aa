"""Stock WsgiDAV (FilesystemProvider on a folder) on cheroot, the baseline for bench/core.py.

Everything not set here is WsgiDAV 4.4's default configuration:

    BENCH_PASSWORD=secret python bench/stock_server.py --port 8081 --root /tmp/x

serves /tmp/x under /files/ with Basic auth for user "bench" (the user name can be changed with
--user). The password comes from the environment so that it does not show up in `ps`.

``--fsync`` is the one departure from stock, for comparing durable writes with durable writes:
each PUT's file, then its folder, is fsync-ed before the answer (as davserver makes each blob
durable before its version is committed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cheroot import wsgi
from wsgidav.fs_dav_provider import BUFFER_SIZE, FileResource
from wsgidav.wsgidav_app import WsgiDAVApp


class _DurableFile:
    """What FileResource.begin_write returns with --fsync: a file whose close() makes it, and
    its name in the folder, durable."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._file = open(path, "wb", BUFFER_SIZE)  # noqa: SIM115 (closed by close())

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        folder = os.open(os.path.dirname(self._path), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def make_writes_durable() -> None:
    def begin_write(self: FileResource, *, content_type: str | None = None) -> _DurableFile:
        return _DurableFile(self._file_path)

    FileResource.begin_write = begin_write


def build_config(host: str, port: int, root: str, user: str, password: str) -> dict[str, object]:
    return {
        "host": host,
        "port": port,
        "provider_mapping": {"/files": root},
        "simple_dc": {"user_mapping": {"*": {user: {"password": password}}}},
        "http_authenticator": {
            "accept_basic": True,
            "accept_digest": False,
            "default_to_digest": False,
        },
        "lock_storage": True,
        "verbose": 1,
        "logging": {"enable": False},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True, help="folder served under /files")
    parser.add_argument("--user", default="bench")
    parser.add_argument("--threads", type=int, default=50, help="cheroot numthreads (50 = stock)")
    parser.add_argument(
        "--fsync", action="store_true", help="fsync each PUT's file and folder (not stock)"
    )
    args = parser.parse_args(argv)

    password = os.environ.get("BENCH_PASSWORD")
    if not password:
        print("stock_server: set BENCH_PASSWORD", file=sys.stderr)
        return 2
    root = str(Path(args.root).resolve())
    if args.fsync:
        make_writes_durable()
    app = WsgiDAVApp(build_config(args.host, args.port, root, args.user, password))
    server = wsgi.Server((args.host, args.port), app, numthreads=args.threads)
    try:
        server.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
