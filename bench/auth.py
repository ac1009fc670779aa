"""Authentication cost: PROPFIND Depth 0 per second with Basic auth, with and without the
credential cache, in one run (plus an API key and a Bearer token for comparison).

Two davserver processes on SQLite: one as configured by default (verified passwords cached
for ``auth.credential_cache_seconds``), one with the cache off (every request runs argon2).
Each round drives every variant over one keep-alive connection for ``--seconds``; the report
gives the median requests per second over the rounds and the cached/uncached ratio.

    .venv/bin/python bench/auth.py             # 3 rounds of 5 s per variant
    .venv/bin/python bench/auth.py --quick     # 1 round of 2 s
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import USER, Client, Server, start_davserver

BODY = (
    b'<?xml version="1.0"?><propfind xmlns="DAV:"><prop><getetag/>'
    b"<getlastmodified/><resourcetype/></prop></propfind>"
)


def rate(client: Client, authorization: str, seconds: float) -> float:
    """PROPFIND /files/ Depth 0 per second over ``seconds`` on one connection."""
    headers = {"Depth": "0", "Authorization": authorization, "Content-Type": "application/xml"}
    done = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        status, _, _ = client.request("PROPFIND", "/files/", BODY, headers)
        if status != 207:
            raise RuntimeError(f"PROPFIND answered {status}")
        done += 1
    return done / elapsed


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def api_json(client: Client, path: str, payload: dict[str, Any], auth: str | None) -> Any:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    status, _, body = client.request("POST", path, json.dumps(payload).encode(), headers)
    if status not in (200, 201):
        raise RuntimeError(f"POST {path} answered {status}: {body[:200]!r}")
    return json.loads(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2.0
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="davbench-auth-") as tmp:
        cached = Server("cached", Path(tmp) / "cached", secrets.token_urlsafe(12))
        uncached = Server("uncached", Path(tmp) / "uncached", secrets.token_urlsafe(12))
        try:
            start_davserver(cached, python, "sqlite", "")
            start_davserver(
                uncached, python, "sqlite", "", ["DAVSERVER_AUTH_CREDENTIAL_CACHE_SECONDS=0"]
            )
            setup = cached.client()
            password = basic(USER, cached.password)
            key = api_json(setup, "/api/v1/keys", {"name": "bench"}, password)["key"]
            token = api_json(
                setup, "/api/v1/token", {"username": USER, "password": cached.password}, None
            )["access_token"]
            setup.close()
            variants = {
                "basic password, cache on": (cached, password),
                "basic password, cache off": (uncached, basic(USER, uncached.password)),
                "basic api key": (cached, basic(USER, key)),
                "bearer token": (cached, f"Bearer {token}"),
            }
            figures: dict[str, list[float]] = {name: [] for name in variants}
            for r in range(args.rounds):
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for name in order:
                    server, authorization = variants[name]
                    client = server.client()
                    rate(client, authorization, 0.3)  # warm up: first hash, connection
                    figures[name].append(rate(client, authorization, args.seconds))
                    client.close()
        finally:
            cached.stop()
            uncached.stop()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    ratio = medians["basic password, cache on"] / medians["basic password, cache off"]
    if args.json:
        print(json.dumps({"requests_per_second": figures, "cache_speedup": ratio}, indent=2))
        return 0
    print(f"PROPFIND Depth 0 with authentication, {args.rounds} x {args.seconds:.0f} s, SQLite")
    for name, values in figures.items():
        spread = f"[{min(values):.0f}-{max(values):.0f}]" if len(values) > 1 else ""
        print(f"  {name:28s} {medians[name]:8.0f} req/s {spread}")
    print(f"  credential cache speed-up: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
