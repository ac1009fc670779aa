"""Stock WsgiDAV (FilesystemProvider on a folder) on cheroot, the baseline for bench/core.py.

Everything not set here is WsgiDAV 4.4's default configuration:

    BENCH_PASSWORD=secret python bench/stock_server.py --port 8081 --root /tmp/x

serves /tmp/x under /files/ with Basic auth for user "bench" (the user name can be changed with
--user). The password comes from the environment so that it does not show up in `ps`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cheroot import wsgi
from wsgidav.wsgidav_app import WsgiDAVApp


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
    args = parser.parse_args(argv)

    password = os.environ.get("BENCH_PASSWORD")
    if not password:
        print("stock_server: set BENCH_PASSWORD", file=sys.stderr)
        return 2
    root = str(Path(args.root).resolve())
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
