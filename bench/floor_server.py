"""The floor for durable small PUTs in this stack: cheroot and a bare WSGI function.

It does only what issue 2's small-PUT target asks of davserver, and nothing else: Basic auth
against one fixed header (no account lookup), then for each PUT stream the body to a temp file
while computing SHA-256, MD5 and SHA-1, fsync it, link it under its SHA-256, fsync that folder,
and in one SQLite transaction (WAL, synchronous=NORMAL, as davserver) insert the blob row (or
find it), the file's row, its version, point the file at the version, and insert a logbook
row; then answer 201. No WebDAV (WsgiDAV), no ORM, no locks, no permissions, no quota, no
names, no folders: MKCOL answers 201 and does nothing. It is not a server anyone should run;
``bench/small_puts.py`` measures it beside stock WsgiDAV and davserver.

    BENCH_PASSWORD=secret python bench/floor_server.py --port 8082 --root /tmp/x
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from cheroot import wsgi

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY, sha256 TEXT UNIQUE, md5 TEXT,
    sha1 TEXT, size INTEGER);
CREATE TABLE IF NOT EXISTS nodes (id TEXT PRIMARY KEY, name TEXT UNIQUE, version_id TEXT,
    size INTEGER);
CREATE TABLE IF NOT EXISTS versions (id TEXT PRIMARY KEY, node_id TEXT, version_no INTEGER,
    blob_id TEXT, size INTEGER, uploaded_at REAL, UNIQUE (node_id, version_no));
CREATE TABLE IF NOT EXISTS logbook (id INTEGER PRIMARY KEY, occurred_at REAL, node_id TEXT,
    version_id TEXT, op TEXT, details TEXT);
"""


class FloorApp:
    def __init__(self, root: str, user: str, password: str) -> None:
        self.root = root
        self.tmp = os.path.join(root, "tmp")
        os.makedirs(self.tmp, exist_ok=True)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.authorization = f"Basic {token}"
        self.local = threading.local()
        self.db().executescript(_SCHEMA)

    def db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(os.path.join(self.root, "floor.sqlite3"), isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self.local.conn = conn
        return conn

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("HTTP_AUTHORIZATION") != self.authorization:
            start_response(
                "401 Unauthorized", [("Content-Length", "0"), ("WWW-Authenticate", "Basic")]
            )
            return [b""]
        method = environ["REQUEST_METHOD"]
        if method in ("MKCOL", "OPTIONS"):
            start_response(
                "201 Created" if method == "MKCOL" else "200 OK", [("Content-Length", "0")]
            )
            return [b""]
        if method != "PUT":
            start_response("405 Method Not Allowed", [("Content-Length", "0")])
            return [b""]
        self.put(environ["PATH_INFO"], environ["wsgi.input"], int(environ["CONTENT_LENGTH"]))
        start_response("201 Created", [("Content-Length", "0")])
        return [b""]

    def put(self, name: str, body: Any, length: int) -> None:
        hashes = (hashlib.sha256(), hashlib.md5(), hashlib.sha1())
        fd, temp = tempfile.mkstemp(dir=self.tmp)
        with os.fdopen(fd, "wb", buffering=0) as out:
            left = length
            while left:
                chunk = body.read(min(left, 65536))
                if not chunk:
                    raise ConnectionError("the body ended early")
                for h in hashes:
                    h.update(chunk)
                out.write(chunk)
                left -= len(chunk)
            os.fsync(out.fileno())
        sha256, md5, sha1 = (h.hexdigest() for h in hashes)
        folder = os.path.join(self.root, sha256[:2])
        os.makedirs(folder, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # the same bytes are stored already
            os.link(temp, os.path.join(folder, sha256))
        os.unlink(temp)
        dirfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        node_id, version_id, now = uuid.uuid4().hex, uuid.uuid4().hex, time.time()
        db = self.db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?, ?)",
                (uuid.uuid4().hex, sha256, md5, sha1, length),
            )
            (blob_id,) = db.execute("SELECT id FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
            db.execute("INSERT INTO nodes VALUES (?, ?, NULL, 0)", (node_id, name))
            db.execute(
                "INSERT INTO versions VALUES (?, ?, 1, ?, ?, ?)",
                (version_id, node_id, blob_id, length, now),
            )
            db.execute(
                "UPDATE nodes SET version_id = ?, size = ? WHERE id = ?",
                (version_id, length, node_id),
            )
            db.execute(
                "INSERT INTO logbook (occurred_at, node_id, version_id, op, details)"
                " VALUES (?, ?, ?, 'file.create', ?)",
                (now, node_id, version_id, f'{{"size": {length}, "sha256": "{sha256}"}}'),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True, help="folder for the blobs and the database")
    parser.add_argument("--user", default="bench")
    args = parser.parse_args()
    app = FloorApp(args.root, args.user, os.environ["BENCH_PASSWORD"])
    server = wsgi.Server((args.host, args.port), app, numthreads=50)
    server.safe_start()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
