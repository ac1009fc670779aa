"""Thumbnail cost: a 256 px thumbnail of a 24-megapixel JPEG, first request and cached.

Starts one ``davserver serve`` process (``bench/core.py``'s helpers; SQLite, or PostgreSQL with
``--db postgresql``), uploads a generated 6000 x 4000 photo-like JPEG, then per round:

* **first**: ``GET <photo>?thumbnail=256`` on bytes the server has never seen (each round
  uploads the photo with a few different trailing bytes, so its SHA-256 and thus its variants
  are new), which converts it in a worker process, stores the variant and sends it;
* **cached**: the same request ``--cached`` times more, answered from the stored variant.

The very first conversion also starts the worker process; it is reported on its own line
("cold"), and the rounds after it measure a warm worker. For comparison the bench also times
the renderer alone, in this process (no HTTP, no worker, no database).

    .venv/bin/python bench/variants.py                  # 5 rounds
    .venv/bin/python bench/variants.py --rounds 10 --db postgresql
"""

from __future__ import annotations

import argparse
import io
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import PG_DEFAULT, VENV_PYTHON, Client, Server, query_count, start_davserver, stop_servers
from PIL import Image

from davserver.imaging import VariantSpec
from davserver.imaging.render import render

WIDTH, HEIGHT = 6000, 4000  # 24 megapixels
OK_PUT = (201, 204)


def photo_like_jpeg() -> bytes:
    """24 MP with smooth gradients and grain, so it encodes and decodes like a photo."""
    small = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((WIDTH // 8, HEIGHT // 8)),
            Image.radial_gradient("L").resize((WIDTH // 8, HEIGHT // 8)),
            Image.linear_gradient("L").rotate(90).resize((WIDTH // 8, HEIGHT // 8)),
        ),
    )
    base = small.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    grain = Image.effect_noise((WIDTH, HEIGHT), 24).convert("RGB")
    photo = Image.blend(base, grain, 0.4)
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=90)
    return out.getvalue()


def timed_get(client: Client, path: str) -> tuple[float, bytes, int | None]:
    started = time.perf_counter()
    status, headers, body = client.request("GET", path)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
    return elapsed * 1000, body, query_count(headers)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ms  [{min(values):.1f}-{max(values):.1f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="new photos, one per round")
    parser.add_argument("--cached", type=int, default=20, help="cached requests per round")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=PG_DEFAULT)
    parser.add_argument(
        "--python", default=str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable)
    )
    args = parser.parse_args(argv)

    print(f"making a {WIDTH} x {HEIGHT} JPEG ...", flush=True)
    photo = photo_like_jpeg()
    print(f"  {len(photo) / 1e6:.1f} MB", flush=True)

    alone = []
    for _ in range(3):
        started = time.perf_counter()
        result = render(io.BytesIO(photo), VariantSpec(256, None, 80), max_pixels=50_000_000)
        alone.append((time.perf_counter() - started) * 1000)
    size = f"{result.width} x {result.height} {result.format}, {len(result.data):,} bytes"

    base = Path(tempfile.mkdtemp(prefix="davbench-variants-"))
    server = Server("davserver", base / "davserver", secrets.token_urlsafe(16))
    try:
        start_davserver(server, args.python, args.db, args.pg_url)
        client = server.client()
        cold: float | None = None
        first: list[float] = []
        cached: list[float] = []
        queries: set[int | None] = set()
        for round_no in range(args.rounds + 1):
            path = f"/files/photo-{round_no}.jpg"
            # Bytes after the JPEG's end marker: a new SHA-256, the same picture.
            body = photo + secrets.token_bytes(16)
            status, _, reply = client.request("PUT", path, body)
            if status not in OK_PUT:
                raise RuntimeError(f"PUT {path} answered {status}: {reply[:300]!r}")
            ms, thumbnail, _ = timed_get(client, path + "?thumbnail=256")
            if round_no == 0:
                cold = ms
                continue
            first.append(ms)
            for _ in range(args.cached):
                ms, again, qc = timed_get(client, path + "?thumbnail=256")
                if again != thumbnail:
                    raise RuntimeError("the cached thumbnail differs from the first one")
                cached.append(ms)
                queries.add(qc)
        client.close()
    finally:
        stop_servers([server], args.pg_url)
        shutil.rmtree(base, ignore_errors=True)

    print(
        f"\n256 px thumbnail of a {WIDTH * HEIGHT / 1e6:.0f}-megapixel JPEG "
        f"({len(photo) / 1e6:.1f} MB) -> {size}; davserver on {args.db}; "
        f"median [min-max]"
    )
    print(f"  renderer alone, in this process   {spread(alone)}   (3 runs)")
    assert cold is not None
    print(f"  first request, cold worker        {cold:8.1f} ms  (starts the worker process)")
    print(f"  first request, warm worker        {spread(first)}   ({args.rounds} photos)")
    print(
        f"  cached request                    {spread(cached)}   "
        f"({len(cached)} requests; X-Query-Count {sorted(q for q in queries if q is not None)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
