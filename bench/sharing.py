"""The cost of permission checks: PROPFIND Depth 1 on a big folder as its owner and as a
grantee reaching it through /shared/, on one server, with the SQL statements each ran.

The owner (``bench``) fills ``/files/big/`` with ``--members`` small files, grants a second
user read and download on the folder (and download on one member, so a per-member grant is in
play), then both list it ``--rounds`` times. A grantee's rights come from the folder's rights
plus the grants loaded once per request, so the statement count does not grow with the folder.
The owner also grants the user ``--grants`` files one by one, and the user lists
``/shared/<owner>/``, which holds each of them; and the owner, an admin, lists ``/users/``
with ``--users`` more accounts in it: neither's statements grow with what it lists.

    .venv/bin/python bench/sharing.py                      # 10,000 members, SQLite
    .venv/bin/python bench/sharing.py --db postgresql      # the same on PostgreSQL
    .venv/bin/python bench/sharing.py --members 500 --grants 100 --users 100  # quick
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import (
    PG_DEFAULT,
    USER,
    Server,
    count_responses,
    propfind,
    put_files,
    start_davserver,
    stop_servers,
)

GRANTEE = "grantee"
# A well-formed argon2 hash for the imported accounts (nobody signs in as them).
_SOME_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$wlhLqTXGuFeKca71/r/3vg$"
    "Nn2f3MQkV1cjGWbm5eYqUD3ad9EpJDWvTsxZKzkjOJ8"
)


def cli(server: Server, pg_url: str, python: str, *args: str, stdin: str = "") -> str:
    """Run ``davserver ARGS`` against the server's own database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAVSERVER_")}
    env["DAVSERVER_DATA_DIR"] = str(server.workdir)
    if server.db_name:
        env["DAVSERVER_DATABASE_URL"] = f"{pg_url.rstrip('/')}/{server.db_name}"
    done = subprocess.run(
        [python, "-m", "davserver", *args], input=stdin, env=env, cwd=server.workdir,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"davserver {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--grants", type=int, default=1_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=PG_DEFAULT)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="davbench-share-") as tmp:
        server = Server("davserver", Path(tmp) / "dav", secrets.token_urlsafe(12))
        try:
            start_davserver(server, python, args.db, args.pg_url)
            owner = server.client()
            owner.expect("MKCOL", "/files/big/", (201,))
            seconds, _, _ = put_files(owner, "/files/big/", args.members, 64, tag=1)
            password = secrets.token_urlsafe(12)
            cli(
                server,
                args.pg_url,
                python,
                "user",
                "create",
                GRANTEE,
                "--password-stdin",
                stdin=password + "\n",
            )
            cli(
                server,
                args.pg_url,
                python,
                "grant",
                f"{USER}:/big",
                "--to",
                GRANTEE,
                "--rights",
                "read,download",
            )
            cli(
                server,
                args.pg_url,
                python,
                "grant",
                f"{USER}:/big/f00001.bin",
                "--to",
                GRANTEE,
                "--rights",
                "download",
            )
            # Items granted one by one: /shared/<owner>/ lists each of them (and big/).
            owner.expect("MKCOL", "/files/each/", (201,))
            put_files(owner, "/files/each/", args.grants, 64, tag=2)
            for i in range(args.grants):
                grant = {"path": f"/files/each/f{i:05d}.bin", "user": GRANTEE, "rights": ["read"]}
                owner.expect(
                    "POST", "/api/v1/grants", (201,), json.dumps(grant).encode(),
                    {"Content-Type": "application/json"},
                )  # fmt: skip
            # Accounts an admin (bench) sees in /users/, each with a space of its own.
            rows = ["username,password_hash"]
            rows += [f'member{i:05d},"{_SOME_HASH}"' for i in range(args.users)]
            listed = Path(tmp) / "users.csv"
            listed.write_text("\n".join(rows) + "\n")
            cli(server, args.pg_url, python, "user", "import", str(listed))
            grantee = server.client()
            grantee.auth = {
                "Authorization": "Basic "
                + base64.b64encode(f"{GRANTEE}:{password}".encode()).decode()
            }
            views = {
                "owner": (owner, "/files/big/", args.members + 1),
                "grantee": (grantee, f"/shared/{USER}/big/", args.members + 1),
                "shared": (grantee, f"/shared/{USER}/", args.grants + 2),
                "users": (owner, "/users/", args.users + 3),
            }
            times: dict[str, list[float]] = {name: [] for name in views}
            queries: dict[str, int | None] = {}
            for r in range(args.rounds + 1):  # the first round warms up
                for name, (client, path, expected) in views.items():
                    elapsed, body, count = propfind(client, path)
                    if count_responses(body) != expected:
                        raise RuntimeError(f"{name} saw {count_responses(body)} responses")
                    if r:
                        times[name].append(elapsed * 1000)
                        queries[name] = count
        finally:
            stop_servers([server], args.pg_url)
    medians = {name: statistics.median(values) for name, values in times.items()}
    if args.json:
        print(json.dumps({"ms": times, "queries": queries, "members": args.members}, indent=2))
        return 0
    print(f"PROPFIND Depth 1 of a {args.members}-member folder, {args.db}, {args.rounds} rounds")
    print(f"  (filled with {args.members} PUTs in {seconds:.1f} s)")
    for name, values in times.items():
        print(
            f"  {name:8s} {medians[name]:8.1f} ms  [{min(values):.1f}-{max(values):.1f}]"
            f"  {queries[name]} SQL statements"
        )
    print(f"  grantee/owner time: {medians['grantee'] / medians['owner']:.2f}x")
    print(
        f"  (shared: /shared/{USER}/ Depth 1, listing big/ and {args.grants} items granted alone)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
