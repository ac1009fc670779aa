"""The image renderer (pure Pillow), its worker pool, and the variant request rules.

Every image is made at test time by ``tests.images``. The renderer is called directly; the pool
tests start real worker processes, plus stand-in workers (a few lines of Python given as the
pool's command) that hang, crash or answer nonsense.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from PIL import Image, ImageCms, ImageDraw

from davserver import errors
from davserver.config import ConfigError, ImageSettings
from davserver.imaging import (
    ImageTooLarge,
    InvalidImage,
    PoolLimits,
    RenderedImage,
    RendererBusy,
    RenderFailed,
    RenderPool,
    UnsupportedImage,
    VariantSpec,
)
from davserver.imaging.render import render
from davserver.services.permissions import EVERYTHING, Perm
from davserver.services.tree import NodeView
from davserver.services.variant_policy import (
    PREVIEW,
    THUMBNAIL,
    VariantPolicy,
    VariantRequest,
    VariantSource,
    may_preview,
)
from tests import images
from tests.images import BLUE, GREEN, RED

MAX_PIXELS = 50_000_000


def make(data: bytes, size: int = 256, fmt: str | None = None, quality: int = 80) -> RenderedImage:
    return render(io.BytesIO(data), VariantSpec(size, fmt, quality), max_pixels=MAX_PIXELS)


def near(pixel: object, expected: tuple[int, ...], tolerance: int = 12) -> bool:
    assert isinstance(pixel, tuple), pixel
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


# --- the renderer: good images ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "fmt", "size", "mode", "corner"),
    [
        ("jpeg", images.jpeg(640, 480), "jpeg", (256, 192), "RGB", RED),
        ("png with alpha", images.png_with_alpha(400, 200), "png", (256, 128), "RGBA", GREEN),
        ("webp", images.webp(500, 250), "jpeg", (256, 128), "RGB", BLUE),
        (
            "animated gif: first frame",
            images.animated_gif(300, 300),
            "jpeg",
            (256, 256),
            "RGB",
            RED,
        ),
        ("tiff", images.tiff(600, 300), "jpeg", (256, 128), "RGB", GREEN),
        ("cmyk jpeg as sRGB", images.cmyk_jpeg(300, 200), "jpeg", (256, 171), "RGB", (255, 0, 0)),
        ("smaller than asked: not enlarged", images.jpeg(40, 30), "jpeg", (40, 30), "RGB", RED),
    ],
)
def test_good_images(
    name: str,
    data: bytes,
    fmt: str,
    size: tuple[int, int],
    mode: str,
    corner: tuple[int, int, int],
) -> None:
    result = make(data)
    decoded = images.decode(result.data)
    assert (result.format, (result.width, result.height)) == (fmt, size), name
    assert decoded.format == fmt.upper() and decoded.size == size and decoded.mode == mode
    assert near(decoded.getpixel((0, 0))[:3], corner), decoded.getpixel((0, 0))  # type: ignore[index]


def test_exif_orientation_is_applied() -> None:
    """Stored 400 x 200 with orientation 6: shown 200 x 400, its left (red) half on top."""
    result = make(images.exif_rotated_jpeg(400, 200))
    decoded = images.decode(result.data)
    assert decoded.size == (128, 256)
    assert near(decoded.getpixel((64, 10)), RED)
    assert near(decoded.getpixel((64, 245)), BLUE)
    assert not decoded.getexif().get(0x0112)


def test_transparency_is_kept_in_png_and_webp_and_flattened_on_white_in_jpeg() -> None:
    source = images.png_with_alpha(400, 200)
    for fmt in ("png", "webp"):
        decoded = images.decode(make(source, fmt=fmt).data)
        assert decoded.mode == "RGBA"
        assert decoded.getpixel((250, 64))[3] == 0  # type: ignore[index]
        assert decoded.getpixel((10, 64))[3] == 255  # type: ignore[index]
    flat = make(source, fmt="jpeg")
    assert flat.source_alpha
    decoded = images.decode(flat.data)
    assert decoded.mode == "RGB"
    assert near(decoded.getpixel((250, 64)), (255, 255, 255))
    assert near(decoded.getpixel((10, 64)), GREEN)


def test_without_a_format_opaque_images_become_jpeg_and_transparent_ones_png() -> None:
    assert make(images.jpeg()).format == "jpeg"
    assert not make(images.jpeg()).source_alpha
    assert make(images.png_with_alpha()).format == "png"
    assert make(images.png_with_alpha()).source_alpha
    assert make(images.jpeg(), fmt="png").format == "png"


def test_quality_level_changes_the_jpeg_and_webp_bytes() -> None:
    noise = images.encode(Image.effect_noise((512, 512), 40).convert("RGB"), "PNG")
    for fmt in ("jpeg", "webp"):
        low, high = make(noise, fmt=fmt, quality=30), make(noise, fmt=fmt, quality=90)
        assert len(low.data) < len(high.data), fmt


def test_sixteen_bit_grey_is_stretched_to_eight_bits() -> None:
    decoded = images.decode(make(images.grey16_png(200, 100)).data)
    assert decoded.mode == "L" and decoded.size == (200, 100)
    assert decoded.getpixel((0, 50)) < 10 and decoded.getpixel((199, 50)) > 245  # type: ignore[operator]


@pytest.mark.parametrize(
    ("mode", "value", "fmt", "expected"),
    [
        ("I;16", 65535, "PNG", 255),  # white: black when each image's range was stretched
        ("I;16", 30000, "PNG", 117),
        ("I;16", 996, "PNG", 4),  # nearly black: it came out white
        ("I", 40000, "TIFF", 156),
        ("F", 0.5, "TIFF", 128),
    ],
)
def test_uniform_high_depth_grey_keeps_its_brightness(
    mode: str, value: float, fmt: str, expected: int
) -> None:
    data = images.encode(Image.new(mode, (300, 300), value), fmt)
    low, high = images.decode(make(data).data).convert("L").getextrema()  # type: ignore[misc]
    assert abs(low - expected) <= 2 and abs(high - expected) <= 2, (low, high)


def test_a_transparent_key_colour_leaves_no_opaque_fringe() -> None:
    """An RGB PNG whose magenta marks transparency (tRNS): resized before the key applied,
    the disc's edge came out as a ring of opaque, nearly magenta pixels."""
    image = Image.new("RGB", (600, 600), (255, 0, 255))
    ImageDraw.Draw(image).ellipse((100, 100, 500, 500), fill=(0, 200, 0))
    data = images.encode(image, "PNG", transparency=(255, 0, 255))
    out = images.decode(make(data, fmt="png").data).convert("RGBA")
    raw = out.tobytes()
    pixels = [tuple(raw[i : i + 4]) for i in range(0, len(raw), 4)]
    fringe = [p for p in pixels if p[3] > 0 and p[0] > 150 and p[2] > 150]
    assert not fringe, fringe[:5]
    assert any(p[3] == 0 for p in pixels) and any(p[3] == 255 for p in pixels)


def test_an_embedded_icc_profile_is_applied_and_dropped() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = images.encode(Image.new("RGB", (300, 300), RED), "JPEG", icc_profile=srgb)
    decoded = images.decode(make(data).data)
    assert "icc_profile" not in decoded.info
    assert near(decoded.getpixel((5, 5)), RED)


def test_output_never_exceeds_the_box_and_keeps_the_aspect_ratio() -> None:
    for width, height in ((3000, 100), (100, 3000), (1000, 1000), (257, 256)):
        result = make(images.jpeg(width, height), size=64)
        assert max(result.width, result.height) == 64
        assert abs(result.width / result.height - width / height) < 0.1 * width / height


# --- the renderer: hostile and broken input -------------------------------------------------


def test_content_decides_not_the_name() -> None:
    with pytest.raises(UnsupportedImage):
        make(images.not_an_image())
    # A real image in a format that is not allowed is refused too.
    with pytest.raises(UnsupportedImage):
        render(
            io.BytesIO(images.png_with_alpha()),
            VariantSpec(64, None, 80),
            max_pixels=MAX_PIXELS,
            input_formats=("JPEG",),
        )
    ico = images.encode(Image.new("RGB", (32, 32), RED), "ICO")
    with pytest.raises(UnsupportedImage):
        make(ico)


def test_a_truncated_image_is_invalid() -> None:
    with pytest.raises(InvalidImage):
        make(images.truncated_jpeg())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
def test_an_image_cut_short_in_its_header_is_invalid_not_unsupported(fmt: str) -> None:
    """A PNG of its signature and half a header: Pillow cannot even tell its format, so it
    was "not an image in an accepted format" (415) where README promises a damaged image
    422. Its signature tells what it claims to be."""
    whole = images.encode(Image.new("RGB", (40, 30), RED), fmt)
    with pytest.raises(InvalidImage, match="cannot be read"):
        make(whole[:14])
    # The signature of a format not accepted here is still unsupported.
    with pytest.raises(UnsupportedImage):
        render(
            io.BytesIO(whole[:14]),
            VariantSpec(64, None, 80),
            max_pixels=MAX_PIXELS,
            input_formats=("ICO",),
        )


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = images.decompression_bomb()
    assert len(bomb) < 200
    started = time.monotonic()
    with pytest.raises(ImageTooLarge):
        make(bomb)
    assert time.monotonic() - started < 1.0  # no pixel was decoded


def test_the_configured_pixel_limit_applies_below_pillows_own() -> None:
    data = images.jpeg(1000, 1000)
    with pytest.raises(ImageTooLarge, match="999999 pixels"):
        render(io.BytesIO(data), VariantSpec(64, None, 80), max_pixels=999_999)
    assert render(io.BytesIO(data), VariantSpec(64, None, 80), max_pixels=1_000_000).width == 64


def test_image_errors_are_domain_errors() -> None:
    assert issubclass(UnsupportedImage, errors.UnsupportedMedia)
    assert issubclass(InvalidImage, errors.Unprocessable)
    assert issubclass(ImageTooLarge, errors.Unprocessable)
    assert issubclass(RenderFailed, errors.Unprocessable)
    assert issubclass(RendererBusy, errors.Unavailable)


# --- the worker pool -----------------------------------------------------------------------

# Stand-in workers: they answer the start handshake, then misbehave on the first job.
_PRELUDE = (
    "import os, socket, sys, time\n"
    "from davserver.imaging.protocol import send_message\n"
    "s = socket.socket(fileno=0)\n"
    "send_message(s, {'ready': True})\n"
    "s.recv(65536)\n"
)
HANGS = _PRELUDE + "time.sleep(3600)\n"
CRASHES = _PRELUDE + "os.abort()\n"
TOO_WIDE = (
    _PRELUDE + "send_message(s, {'ok': True, 'format': 'jpeg', 'width': 9999, 'height': 1}, b'x')\n"
)
HUGE_HEADER = _PRELUDE + "s.sendall((10**8).to_bytes(4, 'big'))\ntime.sleep(3600)\n"


@pytest.fixture
def pool_factory() -> Iterator[Callable[..., RenderPool]]:
    pools: list[RenderPool] = []

    def build(script: str | None = None, **limits: object) -> RenderPool:
        command = (sys.executable, "-c", script) if script else None
        settings = replace(PoolLimits(workers=1, timeout=10.0, memory_mb=512), **limits)
        pool = RenderPool(settings) if command is None else RenderPool(settings, command=command)
        pools.append(pool)
        return pool

    yield build
    for pool in pools:
        pool.close()


def test_the_pool_renders_in_a_worker_process(pool_factory: Callable[..., RenderPool]) -> None:
    pool = pool_factory()
    result = pool.render(io.BytesIO(images.jpeg(640, 480)), VariantSpec(64, "webp", 80))
    assert (result.format, result.width, result.height) == ("webp", 64, 48)
    assert images.decode(result.data).format == "WEBP"
    # The same worker serves the next job, and errors come back as the renderer's.
    with pytest.raises(UnsupportedImage):
        pool.render(io.BytesIO(images.not_an_image()), VariantSpec(64, None, 80))
    with pytest.raises(ImageTooLarge):
        pool.render(io.BytesIO(images.decompression_bomb()), VariantSpec(64, None, 80))
    with pytest.raises(InvalidImage):
        pool.render(io.BytesIO(images.truncated_jpeg()), VariantSpec(64, None, 80))


def test_a_worker_out_of_memory_fails_the_job_and_the_pool_recovers(
    pool_factory: Callable[..., RenderPool],
) -> None:
    """144 MB of pixels behind a 140 KiB PNG, in a worker limited to 150 MiB of address space."""
    pool = pool_factory(memory_mb=150, max_pixels=10**9)
    with pytest.raises(ImageTooLarge, match="memory"):
        pool.render(io.BytesIO(images.memory_hungry_png()), VariantSpec(64, None, 80))
    assert pool.render(io.BytesIO(images.jpeg()), VariantSpec(64, None, 80)).width == 64


def test_a_conversion_over_its_time_is_killed(pool_factory: Callable[..., RenderPool]) -> None:
    pool = pool_factory(HANGS, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(RenderFailed, match="longer than 1 s"):
        pool.render(io.BytesIO(images.jpeg()), VariantSpec(64, None, 80))
    assert time.monotonic() - started < 5


def test_a_crashing_worker_fails_only_its_job(pool_factory: Callable[..., RenderPool]) -> None:
    pool = pool_factory(CRASHES)
    for _ in range(2):  # a fresh worker each time
        with pytest.raises(RenderFailed):
            pool.render(io.BytesIO(images.jpeg()), VariantSpec(64, None, 80))


@pytest.mark.parametrize("noticed", [True, False], ids=["found dead", "dead on sending"])
def test_a_worker_that_died_while_idle_is_replaced_and_the_image_rendered(
    pool_factory: Callable[..., RenderPool], noticed: bool
) -> None:
    """A worker killed while idle (the OOM killer, an operator) got the next job: a broken
    pipe, answered 422, which the server remembers against the image for minutes."""
    pool = pool_factory()
    spec = VariantSpec(64, None, 80)
    assert pool.render(io.BytesIO(images.jpeg()), spec).width == 64
    (idle,) = pool._idle
    idle.process.kill()
    idle.process.wait()
    if not noticed:  # died after the pool looked: the job's sending fails
        idle.process.poll = lambda: None  # type: ignore[method-assign]
    assert pool.render(io.BytesIO(images.jpeg()), spec).width == 64
    assert len(pool._idle) == 1 and pool._idle[0] is not idle


@pytest.mark.parametrize("script", [TOO_WIDE, HUGE_HEADER], ids=["too wide", "huge header"])
def test_a_worker_answer_that_does_not_fit_is_refused(
    pool_factory: Callable[..., RenderPool], script: str
) -> None:
    pool = pool_factory(script, timeout=3.0)
    with pytest.raises(RenderFailed):
        pool.render(io.BytesIO(images.jpeg()), VariantSpec(64, None, 80))


def test_when_every_worker_is_busy_a_request_waits_then_gets_busy(
    pool_factory: Callable[..., RenderPool],
) -> None:
    pool = pool_factory(HANGS, timeout=3.0, queue_wait=0.5)
    first: list[BaseException] = []

    def hang() -> None:
        try:
            pool.render(io.BytesIO(images.jpeg()), VariantSpec(64, None, 80))
        except BaseException as exc:
            first.append(exc)

    thread = threading.Thread(target=hang)
    thread.start()
    time.sleep(0.5)  # the only worker is now busy
    with pytest.raises(RendererBusy):
        pool.render(io.BytesIO(images.jpeg()), VariantSpec(64, None, 80))
    thread.join()
    assert isinstance(first[0], RenderFailed)


# --- what clients may ask for ---------------------------------------------------------------

POLICY = VariantPolicy.from_settings(ImageSettings())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"thumbnail": ["64"]}, (THUMBNAIL, VariantSpec(64, None, 80))),
        ({"thumbnail": ["256"], "format": ["webp"]}, (THUMBNAIL, VariantSpec(256, "webp", 80))),
        ({"preview": ["1024"], "format": ["JPG"]}, (PREVIEW, VariantSpec(1024, "jpeg", 80))),
        ({"preview": ["2048"], "quality": ["60"]}, (PREVIEW, VariantSpec(2048, None, 60))),
        # PNG is lossless: the quality level is not part of what is stored.
        (
            {"thumbnail": ["64"], "format": ["png"], "quality": ["90"]},
            (THUMBNAIL, VariantSpec(64, "png", 0)),
        ),
        ({"thumbnail": ["64"], "unrelated": ["x"]}, (THUMBNAIL, VariantSpec(64, None, 80))),
    ],
)
def test_requests_that_are_allowed(
    query: dict[str, list[str]], expected: tuple[str, VariantSpec]
) -> None:
    assert POLICY.parse(query) == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"thumbnail": ["100"]}, "thumbnail sizes allowed: 64, 256"),
        ({"preview": ["64"]}, "preview sizes allowed: 1024, 2048"),
        ({"thumbnail": ["-64"]}, "whole number"),
        ({"thumbnail": [""]}, "whole number"),
        ({"thumbnail": ["64", "256"]}, "once"),
        ({"thumbnail": ["64"], "preview": ["1024"]}, "either"),
        ({"thumbnail": ["64"], "format": ["gif"]}, "formats allowed: jpeg, png, webp"),
        ({"thumbnail": ["64"], "quality": ["55"]}, "qualities allowed: 60, 80, 90"),
        ({"thumbnail": ["64"], "quality": ["9999999999"]}, "whole number"),
    ],
)
def test_requests_that_are_refused_name_what_is_allowed(
    query: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(errors.BadRequest, match=message):
        POLICY.parse(query)


@pytest.mark.parametrize(
    "settings",
    [
        ImageSettings(thumbnail_sizes="64,big"),
        ImageSettings(preview_sizes=""),
        ImageSettings(thumbnail_sizes="0"),
        ImageSettings(qualities="50,101"),
        ImageSettings(default_quality=75),
        ImageSettings(input_formats="JPEG,PSD"),
        ImageSettings(input_formats=""),
    ],
)
def test_settings_that_make_no_sense_are_config_errors(settings: ImageSettings) -> None:
    with pytest.raises(ConfigError):
        VariantPolicy.from_settings(settings)


@pytest.mark.parametrize(
    ("name", "mime", "expected"),
    [
        ("photo.JPG", None, True),
        ("scan.tiff", None, True),
        ("anim.gif", "application/octet-stream", True),
        ("no-extension", "image/png", True),
        ("notes.txt", None, False),
        ("icon.ico", None, False),
        ("clip.mp4", "video/mp4", False),
    ],
)
def test_has_preview_is_decided_by_type_and_name(
    name: str, mime: str | None, expected: bool
) -> None:
    assert POLICY.looks_like_image(name, mime) is expected


def test_a_format_left_out_of_the_settings_has_no_preview() -> None:
    policy = VariantPolicy.from_settings(ImageSettings(input_formats="JPEG,PNG"))
    assert policy.looks_like_image("a.png", None)
    assert not policy.looks_like_image("a.tiff", None)


# --- who may see a variant ------------------------------------------------------------------

OWNER = uuid.uuid4()


def _view(owner: uuid.UUID) -> NodeView:
    """A file of ``owner``'s; fields this test does not care about are None."""
    values: dict[str, object] = {f.name: None for f in dataclasses.fields(NodeView)}
    now = dt.datetime.now(dt.UTC)
    values.update(
        id=uuid.uuid4(),
        name="photo.jpg",
        kind="file",
        owner_id=owner,
        size=10,
        created_at=now,
        modified_at=now,
        sha256="ab" * 32,
    )
    return NodeView(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rights", "thumbnail", "preview"),
    [
        (EVERYTHING, True, True),
        (Perm.READ, True, False),  # view-only sharing shows thumbnails, not the picture
        (Perm.READ | Perm.DOWNLOAD, True, True),
        (Perm.NONE, False, False),
    ],
)
def test_who_may_see_a_thumbnail_and_a_preview(
    rights: Perm, thumbnail: bool, preview: bool
) -> None:
    assert may_preview(rights) is thumbnail
    assert may_preview(rights, THUMBNAIL) is thumbnail
    assert may_preview(rights, PREVIEW) is preview


def test_the_etag_names_the_source_bytes_and_every_parameter() -> None:
    source = VariantSource("cd" * 32, "cd/cd/x", None, "a.jpg", 10)
    tags = {
        VariantRequest(source, kind, VariantSpec(size, fmt, quality)).etag
        for kind in (THUMBNAIL, PREVIEW)
        for size in (64, 256)
        for fmt in (None, "jpeg", "webp")
        for quality in (60, 80)
    }
    assert len(tags) == 2 * 2 * 3 * 2
    assert all(tag.startswith("cd" * 32) for tag in tags)
