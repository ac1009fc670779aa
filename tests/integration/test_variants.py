"""Thumbnails and previews over real HTTP, on both engines, with the rows behind them.

Most tests talk to ``inproc_server`` (cheroot on a thread of this process), so they can count
conversions (``app.variants.renders``) and look at ``image_variants``; one checks that a real
``davserver serve`` process starts its workers too. Every image is made by ``tests.images``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from davserver.blobstore import FileSystemBlobStore
from davserver.cli import main as cli_main
from davserver.db import Database
from davserver.errors import NotFound
from davserver.imaging import PoolLimits, RenderedImage, RenderPool, VariantSpec
from davserver.imaging.pool import RendererBusy
from davserver.models import Blob, ImageVariant, User
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.permissions import EVERYTHING, Perm
from davserver.services.variants import VariantService
from tests import images
from tests.images import GREEN, RED
from tests.integration.test_dav_http import downloads_of
from tests.integration.test_sharing_http import People
from tests.servers import InprocServer, LiveServer, Response

CACHE_CONTROL = "private, no-cache"  # asked again each time, answered 304
NC_NS = "http://nextcloud.org/ns"


# --- helpers ----------------------------------------------------------------------------------


def put(srv: InprocServer | LiveServer, url: str, data: bytes) -> None:
    response = srv.request("PUT", url, data)
    assert response.status in (201, 204), (response.status, response.body[:300])


def get(
    srv: InprocServer | LiveServer,
    url: str,
    query: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> Response:
    response = srv.request(method, f"{url}?{query}", headers=headers, timeout=60)
    assert b"Traceback" not in response.body, response.body[:2000]
    return response


def service_of(srv: InprocServer) -> VariantService:
    return srv.application.services.variants


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def variant_rows(srv: InprocServer, data: bytes) -> list[sa.Row[Any]]:
    """The image_variants rows made from these source bytes."""
    iv = ImageVariant
    with srv.application.db.read() as session:
        source = sa.select(Blob.id).where(Blob.sha256 == sha(data)).scalar_subquery()
        columns = (iv.variant_type, iv.max_size, iv.format, iv.width, iv.height)
        rows = session.execute(
            sa.select(*columns, iv.size_bytes, iv.version_id).where(iv.source_blob_id == source)
        )
        return list(rows)


def owner_actor(srv: InprocServer) -> Actor:
    with srv.application.db.read() as session:
        user_id = session.scalar(sa.select(User.id).where(User.username == srv.user))
    assert user_id is not None
    return Actor(user_id=user_id, username=srv.user)


def path_parts(url: str) -> list[str]:
    return [p for p in url.split("/files/", 1)[1].split("/") if p]


def renders(srv: InprocServer) -> int:
    return service_of(srv).renders


# --- good images ------------------------------------------------------------------------------

GOOD = [
    # name, bytes, query, content type, size, mode, pixel at (2, 2)
    ("photo.jpg", images.jpeg(640, 480), "thumbnail=256", "image/jpeg", (256, 192), "RGB", RED),
    (
        "logo.png",
        images.png_with_alpha(400, 200),
        "thumbnail=64",
        "image/png",
        (64, 32),
        "RGBA",
        GREEN,
    ),
    (
        "pic.webp",
        images.webp(500, 250),
        "thumbnail=256",
        "image/jpeg",
        (256, 128),
        "RGB",
        images.BLUE,
    ),
    ("anim.gif", images.animated_gif(300, 300), "thumbnail=64", "image/jpeg", (64, 64), "RGB", RED),
    ("scan.tiff", images.tiff(600, 300), "preview=1024", "image/jpeg", (600, 300), "RGB", GREEN),
    (
        "rotated.jpg",
        images.exif_rotated_jpeg(400, 200),
        "thumbnail=256",
        "image/jpeg",
        (128, 256),
        "RGB",
        RED,
    ),
    (
        "print.jpg",
        images.cmyk_jpeg(300, 200),
        "thumbnail=64",
        "image/jpeg",
        (64, 43),
        "RGB",
        (255, 0, 0),
    ),
    (
        "logo.png",
        images.png_with_alpha(400, 200),
        "thumbnail=64&format=webp",
        "image/webp",
        (64, 32),
        "RGBA",
        GREEN,
    ),
    (
        "photo.jpg",
        images.jpeg(640, 480),
        "preview=1024&format=png",
        "image/png",
        (640, 480),
        "RGB",
        RED,
    ),
]


@pytest.mark.parametrize(
    ("name", "data", "query", "content_type", "size", "mode", "pixel"),
    GOOD,
    ids=[f"{g[0]}?{g[2]}" for g in GOOD],
)
def test_good_images_give_variants_of_the_right_size_and_format(
    inproc_server: InprocServer,
    inproc_dav_dir: str,
    name: str,
    data: bytes,
    query: str,
    content_type: str,
    size: tuple[int, int],
    mode: str,
    pixel: tuple[int, int, int],
) -> None:
    put(inproc_server, inproc_dav_dir + name, data)
    response = get(inproc_server, inproc_dav_dir + name, query)
    assert response.status == 200, response.body[:500]
    assert response.headers["Content-Type"] == content_type
    assert int(response.headers["Content-Length"]) == len(response.body)
    decoded = images.decode(response.body)
    assert decoded.size == size
    assert decoded.mode == mode
    assert all(abs(a - b) <= 12 for a, b in zip(decoded.getpixel((2, 2)), pixel, strict=False))


def test_transparency_survives_in_png_and_is_white_in_jpeg(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    url = inproc_dav_dir + "alpha.png"
    put(inproc_server, url, images.png_with_alpha(400, 200))
    png = images.decode(get(inproc_server, url, "thumbnail=256").body)
    assert png.getpixel((200, 64))[3] == 0  # type: ignore[index]
    jpeg = images.decode(get(inproc_server, url, "thumbnail=256&format=jpeg").body)
    assert jpeg.mode == "RGB" and min(jpeg.getpixel((200, 64))) > 240  # type: ignore[arg-type]
    # Asked for without a format again: still the PNG (a JPEG exists now, but the image decides).
    again = get(inproc_server, url, "thumbnail=256")
    assert again.headers["Content-Type"] == "image/png"


def test_a_transparent_images_jpeg_is_not_kept_when_its_png_cannot_be_made(
    inproc_server: InprocServer, inproc_dav_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transparent image's JPEG is stored only with its PNG, so a JPEG found alone is of an
    opaque image (``_lookup``). The JPEG was stored first: when the PNG then failed (every
    worker busy), the default thumbnail was that flattened JPEG for good."""
    url = inproc_dav_dir + "alpha-busy.png"
    put(inproc_server, url, images.png_with_alpha(402, 201))  # bytes no other test renders
    service = service_of(inproc_server)
    real = service._render

    def busy_for_png(request: Any) -> RenderedImage:
        if request.spec.format == "png":
            raise RendererBusy("every image worker is busy; try again shortly")
        return real(request)

    monkeypatch.setattr(service, "_render", busy_for_png)
    assert get(inproc_server, url, "thumbnail=256&format=jpeg").status == 503
    monkeypatch.undo()
    default = get(inproc_server, url, "thumbnail=256")
    assert default.status == 200 and default.headers["Content-Type"] == "image/png"
    assert get(inproc_server, url, "thumbnail=256&format=jpeg").status == 200


def test_a_lower_quality_gives_smaller_bytes(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    url = inproc_dav_dir + "noise.png"
    put(
        inproc_server,
        url,
        images.encode(images.Image.effect_noise((800, 800), 50).convert("RGB"), "PNG"),
    )
    low = get(inproc_server, url, "preview=1024&format=jpeg&quality=60")
    high = get(inproc_server, url, "preview=1024&format=jpeg&quality=90")
    assert low.status == high.status == 200
    assert len(low.body) < len(high.body)
    assert low.headers["ETag"] != high.headers["ETag"]


# --- bad images and bad requests ---------------------------------------------------------------

BAD = [
    ("fake.png", images.not_an_image(), 415),
    ("icon.png", images.encode(images.Image.new("RGB", (32, 32)), "ICO"), 415),
    ("empty.png", b"", 415),
    ("cut.jpg", images.truncated_jpeg(), 422),
    ("bomb.png", images.decompression_bomb(), 422),
    ("big.png", images.png_header_only(8000, 8000), 422),  # 64 MP: over max_pixels
]


@pytest.mark.parametrize(("name", "data", "status"), BAD, ids=[b[0] for b in BAD])
def test_bad_images_get_a_clean_4xx(
    inproc_server: InprocServer, inproc_dav_dir: str, name: str, data: bytes, status: int
) -> None:
    url = inproc_dav_dir + name
    put(inproc_server, url, data)
    for method in ("GET", "HEAD"):
        response = get(inproc_server, url, "thumbnail=64", method=method)
        assert response.status == status, (method, response.body[:500])
    # The file itself is still served as it is.
    assert inproc_server.request("GET", url).body == data


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("thumbnail=100", 400, b"64, 256"),
        ("preview=64", 400, b"1024, 2048"),
        ("thumbnail=64&format=gif", 400, b"jpeg, png, webp"),
        ("thumbnail=64&quality=55", 400, b"60, 80, 90"),
        ("thumbnail=64&preview=1024", 400, b"either"),
        ("thumbnail=abc", 400, b"whole number"),
        ("thumbnail=%C2%B2", 400, b"whole number"),  # a superscript 2: int() refused it, a 500
        ("thumbnail=%D9%A2%D9%A5%D9%A6", 400, b"whole number"),  # Arabic-Indic 256: taken
        ("thumbnail=64&quality=%C2%B9", 400, b"whole number"),
    ],
)
def test_bad_parameters_get_400_naming_what_is_allowed(
    inproc_server: InprocServer, inproc_dav_dir: str, query: str, status: int, text: bytes
) -> None:
    url = inproc_dav_dir + "p.jpg"
    put(inproc_server, url, images.jpeg(100, 100))
    response = get(inproc_server, url, query)
    assert response.status == status
    assert text in response.body


def test_a_folder_has_no_thumbnail(inproc_server: InprocServer, inproc_dav_dir: str) -> None:
    assert get(inproc_server, inproc_dav_dir, "thumbnail=64").status == 400
    assert get(inproc_server, inproc_dav_dir + "missing.jpg", "thumbnail=64").status == 404


# --- caching ----------------------------------------------------------------------------------


def test_the_second_request_is_served_from_the_cache(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    data = images.jpeg(1200, 900, (30, 140, 200))
    url = inproc_dav_dir + "cached.jpg"
    put(inproc_server, url, data)
    before = renders(inproc_server)
    first = get(inproc_server, url, "thumbnail=256")
    assert renders(inproc_server) == before + 1
    second = get(inproc_server, url, "thumbnail=256")
    head = get(inproc_server, url, "thumbnail=256", method="HEAD")
    assert renders(inproc_server) == before + 1
    assert first.status == second.status == head.status == 200
    assert first.body == second.body and head.body == b""
    assert first.headers["ETag"] == second.headers["ETag"] == head.headers["ETag"]
    assert head.headers["Content-Length"] == str(len(first.body))
    rows = variant_rows(inproc_server, data)
    assert [(r.variant_type, r.max_size, r.format, r.width, r.height) for r in rows] == [
        ("thumbnail", 256, "jpeg", 256, 192)
    ]
    assert rows[0].size_bytes == len(first.body)
    # The same bytes under another name share the variant.
    put(inproc_server, inproc_dav_dir + "copy.jpg", data)
    assert get(inproc_server, inproc_dav_dir + "copy.jpg", "thumbnail=256").body == first.body
    assert renders(inproc_server) == before + 1


def damage_variant(srv: InprocServer, body: bytes, damage: str) -> Path:
    """Remove (``lost``) or cut short (``cut``) the stored blob of a variant sent as ``body``;
    its path."""
    key = sha(body)
    path: Path = srv.application.services.blobs.path_of(f"{key[:2]}/{key}")  # type: ignore[attr-defined]
    if damage == "lost":
        path.unlink()
    else:
        os.truncate(path, 100)
    return path


@pytest.mark.parametrize("damage", ["lost", "cut"])
def test_a_variant_whose_bytes_are_lost_or_cut_short_is_made_again(
    inproc_server: InprocServer, inproc_dav_dir: str, damage: str
) -> None:
    """A variant is only a cache of a conversion. When the blob store lost its bytes (a file
    removed by hand, a disk restored from an older backup) or holds them cut short (a crash
    with fsync off), it was a 404 for ever, until ``variants rebuild --force`` converted every
    image again; a HEAD meanwhile said 200. Both now convert it again, once, and answer with it."""
    data = images.jpeg(1200, 900, (200, 40, 90))
    url = inproc_dav_dir + f"{damage}.jpg"
    put(inproc_server, url, data)
    first = get(inproc_server, url, "thumbnail=256")
    assert first.status == 200
    path = damage_variant(inproc_server, first.body, damage)
    before = renders(inproc_server)
    head = get(inproc_server, url, "thumbnail=256", method="HEAD")
    assert head.status == 200, head.body[:300]
    assert head.headers["ETag"] == first.headers["ETag"]
    assert head.headers["Content-Length"] == str(len(first.body))
    again = get(inproc_server, url, "thumbnail=256")
    assert again.status == 200, again.body[:300]
    assert again.body == first.body and again.headers["ETag"] == first.headers["ETag"]
    assert renders(inproc_server) == before + 1
    assert path.stat().st_size == len(first.body)
    assert len(variant_rows(inproc_server, data)) == 1
    # Lost again, now asked for by GET first, by several at once: converted once.
    damage_variant(inproc_server, first.body, damage)
    results: list[Response] = []
    start = threading.Barrier(3)

    def fetch() -> None:
        start.wait()
        results.append(get(inproc_server, url, "thumbnail=256"))

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [(r.status, r.body) for r in results] == [(200, first.body)] * 3
    assert renders(inproc_server) == before + 2


def test_a_transparent_images_lost_png_is_made_again_not_replaced_by_its_jpeg(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    """Without a format, a transparent image's PNG is told apart from its JPEG by reading the
    PNG's header; with the PNG's bytes lost, the flattened JPEG was taken instead."""
    url = inproc_dav_dir + "alpha-lost.png"
    put(inproc_server, url, images.png_with_alpha(404, 202))  # bytes no other test renders
    png = get(inproc_server, url, "thumbnail=256")
    assert png.headers["Content-Type"] == "image/png"
    assert get(inproc_server, url, "thumbnail=256&format=jpeg").status == 200
    damage_variant(inproc_server, png.body, "lost")
    again = get(inproc_server, url, "thumbnail=256")
    assert again.status == 200 and again.headers["Content-Type"] == "image/png"
    assert again.body == png.body


def test_a_source_cut_short_is_a_404_and_its_repair_is_seen_at_once(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    """A thumbnail of an image whose blob was cut short was a 422 ("cannot read the image"),
    remembered for 5 minutes: the same upload again repairs the blob, and the thumbnail still
    failed. It is a 404 saying the bytes are damaged, as for the file's GET, and not kept."""
    data = images.jpeg(900, 700, (20, 200, 90))
    url = inproc_dav_dir + "cut-source.jpg"
    put(inproc_server, url, data)
    blobs = inproc_server.application.services.blobs
    key = sha(data)
    os.truncate(blobs.path_of(f"{key[:2]}/{key}"), 1000)  # type: ignore[attr-defined]
    cut = get(inproc_server, url, "thumbnail=256")
    assert cut.status == 404 and b"damaged in the blob store" in cut.body, cut.body[:300]
    put(inproc_server, inproc_dav_dir + "again.jpg", data)  # the upload heals the blob
    assert get(inproc_server, url, "thumbnail=256").status == 200


def test_cache_headers_and_if_none_match(inproc_server: InprocServer, inproc_dav_dir: str) -> None:
    data = images.jpeg(300, 300, (90, 90, 10))
    url = inproc_dav_dir + "etag.jpg"
    put(inproc_server, url, data)
    response = get(inproc_server, url, "thumbnail=64&format=webp&quality=60")
    assert response.status == 200
    assert response.headers["Cache-Control"] == CACHE_CONTROL
    etag = response.headers["ETag"]
    assert etag == f'"{sha(data)}-thumbnail-64-webp-q60"'
    before = renders(inproc_server)
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        not_modified = get(
            inproc_server, url, "thumbnail=64&format=webp&quality=60", {"If-None-Match": header}
        )
        assert not_modified.status == 304, header
        assert not_modified.body == b""
        assert not_modified.headers["ETag"] == etag
        assert "Content-Length" not in not_modified.headers  # RFC 9110 8.6
        assert not_modified.headers.get("Connection") != "close"  # kept alive
    assert get(inproc_server, url, "thumbnail=64", {"If-None-Match": etag}).status == 200
    assert renders(inproc_server) == before + 1
    # "*" matches only a variant that exists: not one of a file that is no image (a 304
    # told the client its cached copy of nothing was fine).
    put(inproc_server, inproc_dav_dir + "notes.jpg", b"not a picture")
    star = {"If-None-Match": "*"}
    assert get(inproc_server, inproc_dav_dir + "notes.jpg", "thumbnail=64", star).status == 415


def test_if_match_names_the_variant_or_gets_412(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    """If-Match was ignored on a thumbnail: a client holding another one's ETag got 200,
    where the file itself and a package's zip answer 412."""
    url = inproc_dav_dir + "matched.jpg"
    put(inproc_server, url, images.jpeg(300, 200, (10, 120, 60)))
    etag = get(inproc_server, url, "thumbnail=64").headers["ETag"]
    for header, status in ((etag, 200), ("*", 200), ('"nope"', 412), (f"W/{etag}", 412)):
        got = get(inproc_server, url, "thumbnail=64", {"If-Match": header}).status
        assert got == status, (header, got)


def test_no_variant_or_version_is_kept_by_a_browser_without_asking(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    """A browser keeps a response marked immutable without asking again, and one without
    Cache-Control for a tenth of the time since it changed. A version's URL can come to name
    other bytes: after a rename and a new upload at the path, ``?version=1`` is the new file's
    (and the newest version can be replaced in place). So every variant and every version is
    sent ``no-cache``: the browser asks each time, and the ETag makes that a 304."""
    url = inproc_dav_dir + "cached.jpg"
    entry = url.replace("/files/", "/versions/files/", 1) + "/cached.v1.jpg"
    put(inproc_server, url, images.jpeg(640, 480, RED))
    put(inproc_server, url, images.jpeg(480, 640, RED))
    first = get(inproc_server, url, "version=1&thumbnail=64")
    moved = inproc_server.request("MOVE", url, headers={"Destination": url + ".old"})
    assert moved.status == 201, moved.body
    put(inproc_server, url, images.jpeg(640, 480, GREEN))
    put(inproc_server, url, images.jpeg(480, 640, GREEN))
    second = get(inproc_server, url, "version=1&thumbnail=64")
    assert first.headers["ETag"] != second.headers["ETag"]
    answers = [
        first,
        second,
        get(inproc_server, url, "thumbnail=64"),
        get(inproc_server, entry, "thumbnail=64"),
        get(inproc_server, url, "version=1"),
        get(inproc_server, entry, ""),
    ]
    for response in answers:
        assert response.status == 200
        directives = [d.strip() for d in response.headers["Cache-Control"].split(",")]
        assert "no-cache" in directives and "immutable" not in directives, directives


def test_a_new_version_gets_new_variants(inproc_server: InprocServer, inproc_dav_dir: str) -> None:
    url = inproc_dav_dir + "versioned.jpg"
    old, new = images.jpeg(640, 480, (201, 13, 77)), images.jpeg(480, 640, (13, 201, 77))
    put(inproc_server, url, old)
    first = get(inproc_server, url, "thumbnail=64")
    put(inproc_server, url, new)
    second = get(inproc_server, url, "thumbnail=64")
    assert images.decode(first.body).size == (64, 48)
    assert images.decode(second.body).size == (48, 64)
    assert first.headers["ETag"] != second.headers["ETag"]
    assert len(variant_rows(inproc_server, old)) == len(variant_rows(inproc_server, new)) == 1
    new_row = variant_rows(inproc_server, new)[0]
    view = inproc_server.application.files.resolve(
        inproc_server.application.files.home_id(owner_actor(inproc_server).user_id),
        path_parts(url),
    )
    assert view is not None and new_row.version_id == view.current_version_id


def test_simultaneous_first_requests_convert_once(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    data = images.jpeg(2000, 1500, (200, 100, 50))
    url = inproc_dav_dir + "busy.jpg"
    put(inproc_server, url, data)
    before = renders(inproc_server)
    results: list[Response] = []
    start = threading.Barrier(4)

    def fetch() -> None:
        start.wait()
        results.append(get(inproc_server, url, "preview=1024"))

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status for r in results] == [200] * 4
    assert len({r.body for r in results}) == 1
    assert renders(inproc_server) == before + 1
    assert len(variant_rows(inproc_server, data)) == 1


class _MeetAfterRendering:
    """A pool whose conversions wait for each other before they return, so that two services
    (two server processes, say) both convert and both try to insert the same variant."""

    def __init__(self, pool: RenderPool, barrier: threading.Barrier) -> None:
        self.pool = pool
        self.barrier = barrier

    def render(self, source: Any, spec: VariantSpec) -> RenderedImage:
        result = self.pool.render(source, spec)
        self.barrier.wait(timeout=30)
        return result

    def close(self) -> None:
        self.pool.close()


def test_two_servers_converting_the_same_variant_at_once_both_succeed(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    app = inproc_server.application
    data = images.jpeg(900, 600, (10, 150, 150))
    url = inproc_dav_dir + "race.jpg"
    put(inproc_server, url, data)
    actor = owner_actor(inproc_server)
    view = app.files.resolve(app.files.home_id(actor.user_id), path_parts(url))
    assert view is not None
    barrier = threading.Barrier(2)
    services = [
        VariantService(
            app.db,
            app.blobs,
            app.files,
            service_of(inproc_server).policy,
            _MeetAfterRendering(RenderPool(PoolLimits(workers=1)), barrier),  # type: ignore[arg-type]
        )
        for _ in range(2)
    ]
    outcomes: list[Any] = [None, None]

    def convert(index: int) -> None:
        service = services[index]
        try:
            outcomes[index] = service.get(service.request(EVERYTHING, view, {"thumbnail": ["64"]}))
        except BaseException as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=convert, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for service in services:
        service.close()
    assert all(s.renders == 1 for s in services)
    assert outcomes[0] == outcomes[1], outcomes
    assert len(variant_rows(inproc_server, data)) == 1


# --- a hostile conversion does not stop the server --------------------------------------------

HANGING_WORKER = (
    "import socket, time\n"
    "from davserver.imaging.protocol import send_message\n"
    "s = socket.socket(fileno=0)\n"
    "send_message(s, {'ready': True})\n"
    "s.recv(65536)\n"
    "time.sleep(3600)\n"
)


@contextmanager
def hanging_conversions(
    srv: InprocServer, monkeypatch: pytest.MonkeyPatch, queue_wait: float = 3.0
) -> Iterator[None]:
    """Every conversion hangs until its 3 s are up (a stand-in for a pathological image)."""
    pool = RenderPool(
        PoolLimits(workers=1, timeout=3.0, queue_wait=queue_wait),
        command=(sys.executable, "-c", HANGING_WORKER),
    )
    with monkeypatch.context() as patch:
        patch.setattr(service_of(srv), "pool", pool)
        try:
            yield
        finally:
            pool.close()


def test_while_a_conversion_hangs_the_server_serves_everyone_else(
    inproc_server: InprocServer, inproc_dav_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached_url, slow_url, plain_url = (inproc_dav_dir + n for n in ("c.jpg", "s.jpg", "t.txt"))
    put(inproc_server, cached_url, images.jpeg(320, 240))
    assert get(inproc_server, cached_url, "thumbnail=64").status == 200  # cached before
    put(inproc_server, plain_url, b"hello")
    put(inproc_server, slow_url, images.jpeg(321, 240))
    with hanging_conversions(inproc_server, monkeypatch):
        slow: list[Response] = []
        thread = threading.Thread(
            target=lambda: slow.append(get(inproc_server, slow_url, "thumbnail=64"))
        )
        started = time.monotonic()
        thread.start()
        time.sleep(0.5)
        assert inproc_server.request("GET", plain_url, timeout=5).body == b"hello"
        listing = inproc_server.request("PROPFIND", inproc_dav_dir, headers={"Depth": "1"})
        assert listing.status == 207
        put(inproc_server, inproc_dav_dir + "new.txt", b"meanwhile")
        assert get(inproc_server, cached_url, "thumbnail=64").status == 200  # needs no worker
        assert thread.is_alive(), "the hanging conversion should still be running"
        assert time.monotonic() - started < 3.0
        thread.join()
    assert slow[0].status == 422
    assert b"longer than 3 s" in slow[0].body
    # Asked again: answered from memory, without tying up a worker for another 3 s.
    started = time.monotonic()
    assert get(inproc_server, slow_url, "thumbnail=64").status == 422
    assert time.monotonic() - started < 1.0
    assert get(inproc_server, slow_url, "thumbnail=256").status == 200


def test_when_every_worker_is_busy_the_answer_is_503_with_retry_after(
    inproc_server: InprocServer, inproc_dav_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_url, second_url = inproc_dav_dir + "one.jpg", inproc_dav_dir + "two.jpg"
    put(inproc_server, first_url, images.jpeg(322, 240))
    put(inproc_server, second_url, images.jpeg(323, 240))
    with hanging_conversions(inproc_server, monkeypatch, queue_wait=0.5):
        thread = threading.Thread(target=lambda: get(inproc_server, first_url, "thumbnail=64"))
        thread.start()
        time.sleep(0.5)  # the only worker is busy with the first
        busy = get(inproc_server, second_url, "thumbnail=64")
        thread.join()
    assert busy.status == 503
    assert busy.headers["Retry-After"].isdigit()
    assert get(inproc_server, second_url, "thumbnail=64").status == 200  # not remembered


# --- permission and the has-preview property ---------------------------------------------------


def test_only_someone_who_may_read_the_file_gets_a_variant(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    app = inproc_server.application
    url = inproc_dav_dir + "private.jpg"
    put(inproc_server, url, images.jpeg(100, 100))
    owner = owner_actor(inproc_server)
    view = app.files.resolve(app.files.home_id(owner.user_id), path_parts(url))
    assert view is not None
    service = service_of(inproc_server)
    with pytest.raises(NotFound):
        service.request(Perm.NONE, view, {"thumbnail": ["64"]})
    assert service.request(Perm.READ, view, {"thumbnail": ["64"]}).source.sha256 == view.sha256


def _near(pixel: Any, color: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(pixel, color, strict=True))


def test_older_versions_have_thumbnails_too(inproc_server: InprocServer) -> None:
    """?version=N with ?thumbnail= on the file, or ?thumbnail= on its entry in /versions/:
    the variant of that version's bytes. Like the current one's, it needs only READ."""
    people = People(inproc_server)
    alice, bob, carol = people.alice, people.bob, people.carol
    path = "/files/history.jpg"
    assert people.put(alice, path, images.jpeg(640, 480, RED)) == 201
    assert people.put(alice, path, images.jpeg(480, 640, GREEN)) == 204
    current = people.call(alice, "GET", path + "?thumbnail=64")
    by_number = people.call(alice, "GET", path + "?version=1&thumbnail=64")
    by_entry = people.call(alice, "GET", "/versions/files/history.jpg/history.v1.jpg?thumbnail=64")
    assert (current.status, by_number.status, by_entry.status) == (200, 200, 200)
    assert images.decode(current.body).size == (48, 64)
    assert _near(images.decode(current.body).getpixel((24, 32)), GREEN)
    assert images.decode(by_number.body).size == (64, 48)
    assert _near(images.decode(by_number.body).getpixel((32, 24)), RED)
    assert by_entry.body == by_number.body
    assert by_entry.headers["ETag"] == by_number.headers["ETag"] != current.headers["ETag"]
    revalidated = people.call(
        alice,
        "GET",
        path + "?version=1&thumbnail=64",
        headers={"If-None-Match": by_number.headers["ETag"]},
    )
    assert revalidated.status == 304
    assert people.call(alice, "GET", path + "?version=3&thumbnail=64").status == 404
    assert people.call(alice, "GET", path + "?version=x&thumbnail=64").status == 400
    # bob may read the file, not download it: thumbnails of each version, no bytes.
    assert people.grant(alice, path, bob, "read") == 201
    shared = f"/shared/{alice}/history.jpg"
    assert people.call(bob, "GET", shared + "?version=1&thumbnail=64").body == by_number.body
    entry = f"/versions/shared/{alice}/history.jpg/history.v1.jpg"
    assert people.call(bob, "GET", entry + "?thumbnail=64").body == by_number.body
    assert people.call(bob, "GET", entry).status == 403
    assert people.call(bob, "GET", shared + "?version=1").status == 403
    # carol may not even see it.
    assert people.call(carol, "GET", shared + "?version=1&thumbnail=64").status == 404
    assert people.call(carol, "GET", entry + "?thumbnail=64").status == 404


PROPFIND_HAS_PREVIEW = (
    b'<?xml version="1.0"?><d:propfind xmlns:d="DAV:" xmlns:nc="http://nextcloud.org/ns">'
    b"<d:prop><nc:has-preview/><d:displayname/></d:prop></d:propfind>"
)


def has_preview(body: bytes) -> dict[str, str | None]:
    """{display name: has-preview text} from a multistatus."""
    found: dict[str, str | None] = {}
    for response in ET.fromstring(body).iter("{DAV:}response"):
        name = response.findtext(".//{DAV:}displayname") or ""
        element = response.find(f".//{{{NC_NS}}}has-preview")
        found[name] = None if element is None else element.text
    return found


def test_has_preview_in_propfind(inproc_server: InprocServer, inproc_dav_dir: str) -> None:
    for name, data in [
        ("a.jpg", images.jpeg(50, 50)),
        ("b.PNG", images.png_with_alpha(50, 50)),
        ("notes.txt", b"text"),
        ("empty.jpg", b""),
    ]:
        put(inproc_server, inproc_dav_dir + name, data)
    assert inproc_server.request("MKCOL", inproc_dav_dir + "sub/").status == 201
    before = renders(inproc_server)
    # The fast renderer (Depth 1, no conditions).
    listing = inproc_server.request(
        "PROPFIND", inproc_dav_dir, PROPFIND_HAS_PREVIEW, {"Depth": "1"}
    )
    assert listing.status == 207
    flags = has_preview(listing.body)
    assert {k: flags[k] for k in ("a.jpg", "b.PNG", "notes.txt", "empty.jpg", "sub")} == {
        "a.jpg": "true",
        "b.PNG": "true",
        "notes.txt": "false",
        "empty.jpg": "false",
        "sub": "false",
    }
    # WsgiDAV's own PROPFIND (Depth: infinity on a file is not the fast path).
    single = inproc_server.request(
        "PROPFIND", inproc_dav_dir + "a.jpg", PROPFIND_HAS_PREVIEW, {"Depth": "infinity"}
    )
    assert single.status == 207
    assert has_preview(single.body) == {"a.jpg": "true"}
    # It is not part of allprop, and listing never converts anything.
    allprop = inproc_server.request("PROPFIND", inproc_dav_dir, headers={"Depth": "1"})
    assert b"has-preview" not in allprop.body
    assert renders(inproc_server) == before
    # The property is read-only.
    proppatch = (
        b'<?xml version="1.0"?><d:propertyupdate xmlns:d="DAV:" xmlns:nc="http://nextcloud.org/ns">'
        b"<d:set><d:prop><nc:has-preview>false</nc:has-preview></d:prop></d:set></d:propertyupdate>"
    )
    response = inproc_server.request("PROPPATCH", inproc_dav_dir + "a.jpg", proppatch)
    assert response.status == 207 and b"403" in response.body


# --- made right after upload --------------------------------------------------------------------


def test_with_render_on_upload_thumbnails_are_made_in_the_background(
    inproc_server: InprocServer, inproc_dav_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = service_of(inproc_server)
    monkeypatch.setattr(service, "policy", replace(service.policy, render_on_upload=True))
    data = images.jpeg(800, 600, (1, 2, 3))
    url = inproc_dav_dir + "uploaded.jpg"
    put(inproc_server, url, data)
    deadline = time.monotonic() + 30
    while len(variant_rows(inproc_server, data)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = variant_rows(inproc_server, data)
    assert sorted((r.variant_type, r.max_size) for r in rows) == [
        ("thumbnail", 64),
        ("thumbnail", 256),
    ]
    before = renders(inproc_server)
    assert get(inproc_server, url, "thumbnail=256").status == 200
    assert renders(inproc_server) == before
    # A file that does not look like an image is left alone.
    put(inproc_server, inproc_dav_dir + "notes.txt", b"no thumbnails")
    time.sleep(0.3)
    assert variant_rows(inproc_server, b"no thumbnails") == []


# --- a real server process -----------------------------------------------------------------------


def test_a_davserver_process_serves_thumbnails(live_server: LiveServer, dav_dir: str) -> None:
    url = dav_dir + "live.jpg"
    put(live_server, url, images.jpeg(640, 480))
    response = get(live_server, url, "thumbnail=64")
    assert response.status == 200, response.body[:500] + live_server.diagnostics().encode()
    assert images.decode(response.body).size == (64, 48)
    assert (
        get(live_server, url, "thumbnail=64", {"If-None-Match": response.headers["ETag"]}).status
        == 304
    )
    put(live_server, dav_dir + "bomb.png", images.decompression_bomb())
    assert get(live_server, dav_dir + "bomb.png", "thumbnail=64").status == 422


# --- davserver variants rebuild ------------------------------------------------------------------


def test_variants_rebuild(
    db_url: str, database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob_dir = tmp_path / "blobs"
    files = FileService(database, FileSystemBlobStore(blob_dir, fsync=False))
    with database.write() as session:
        user = User(username="carol", password_hash="x")
        session.add(user)
        session.flush()
        actor = Actor(user_id=user.id, username="carol")
    home = files.resolve(files.home_id(actor.user_id), [])
    assert home is not None
    uploaded = {}
    for name, data in [
        ("a.jpg", images.jpeg(1500, 1000)),
        ("b.png", images.png_with_alpha(300, 200)),
        ("same-as-a.jpeg", images.jpeg(1500, 1000)),
        ("broken.jpg", images.truncated_jpeg()),
        ("notes.txt", b"not an image"),
        ("misnamed.jpg", b"not an image either"),
    ]:
        writer = files.blobs.writer()
        writer.write(data)
        uploaded[name], _ = files.commit_upload(actor, home, name, writer.finish())
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\ndatabase:\n  url: {db_url}\n"
        f"storage:\n  blob_dir: {blob_dir}\n  fsync: false\n"
    )

    def rebuild(*extra: str) -> tuple[int, dict[str, Any], str]:
        status = cli_main(["--config", str(config), "variants", "rebuild", "--json", *extra])
        out, err = capsys.readouterr()
        return status, json.loads(out), err

    status, summary, err = rebuild()
    assert status == 1  # one image could not be converted
    assert {k: summary[k] for k in ("images", "made", "kept", "failed", "not_images")} == {
        "images": 4,
        "made": 8,  # 2 good images x (2 thumbnail + 2 preview sizes)
        "kept": 0,
        "failed": 1,
        "not_images": 1,  # misnamed.jpg: no failure
    }
    assert [f["name"] for f in summary["failures"]] == ["broken.jpg"]
    assert "variants: 4/4 images, 8 made, 0 kept, 1 failed" in err
    assert "broken.jpg" in err
    with database.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ImageVariant)) == 8

    status, summary, _ = rebuild()
    assert (status, summary["made"], summary["kept"]) == (1, 0, 8)

    # A variant whose bytes the blob store lost is made again without --force.
    with database.read() as session:
        lost = session.scalar(  # a JPEG: a PNG variant can hold the bytes of its source
            sa.select(Blob.storage_key)
            .join(ImageVariant, ImageVariant.blob_id == Blob.id)
            .where(ImageVariant.format == "jpeg")
            .limit(1)
        )
    assert lost is not None
    lost_path = files.blobs.path_of(lost)  # type: ignore[attr-defined]
    lost_path.unlink()
    status, summary, _ = rebuild()
    assert (status, summary["made"], summary["kept"]) == (1, 1, 7)
    assert lost_path.is_file()

    files.delete(actor, uploaded["broken.jpg"].id)
    status, summary, _ = rebuild("--force")
    assert (status, summary["images"], summary["made"], summary["failed"]) == (0, 3, 8, 0)
    with database.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ImageVariant)) == 8

    assert cli_main(["--config", str(config), "variants", "rebuild", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "made" in out and "kept" in out


def test_a_preview_is_logged_as_a_download_and_a_thumbnail_is_not(
    inproc_server: InprocServer, inproc_dav_dir: str
) -> None:
    """A preview needs the download right because, at 1024 or 2048 pixels, it is the picture
    itself: who fetched one belongs in the logbook as a download does (DESIGN: every download
    writes a row). A thumbnail needs only the read right, and a folder of photos asks for
    hundreds: it is not logged, nor is a HEAD or a 304."""
    app = inproc_server.application
    url = inproc_dav_dir + "logged.jpg"
    put(inproc_server, url, images.jpeg(1600, 1200, (200, 40, 40)))
    put(inproc_server, url, images.jpeg(1600, 1200, (40, 200, 40)))
    view = app.files.resolve(app.files.home_id(owner_actor(inproc_server).user_id), path_parts(url))
    assert view is not None

    assert get(inproc_server, url, "thumbnail=256").status == 200
    preview = get(inproc_server, url, "preview=1024")
    assert preview.status == 200
    assert get(inproc_server, url, "preview=1024", method="HEAD").status == 200
    etag = preview.headers["ETag"]
    assert get(inproc_server, url, "preview=1024", {"If-None-Match": etag}).status == 304
    assert get(inproc_server, url, "preview=1024&version=1&format=png").status == 200
    app.files.read_log.flush()

    rows = downloads_of(app, view.id)
    assert [(row.user_id, row.details) for row in rows] == [
        (view.owner_id, {"size": len(preview.body), "variant": "preview 1024x768 jpeg"}),
        (view.owner_id, {"size": rows[1].details["size"], "version_no": 1,
                         "variant": "preview 1024x768 png"}),
    ]  # fmt: skip
    assert rows[0].version_id == view.current_version_id != rows[1].version_id
