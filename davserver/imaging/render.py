"""Thumbnails and previews with Pillow: bytes in, bytes out, no database and no HTTP.

``render`` reads one image and writes one variant:

* the input is recognised by its content, among an allowed list of formats
  (``Image.open(fp, formats=...)``); a file's name or declared type plays no part;
* an image of more than ``max_pixels`` pixels is refused before any pixel is decoded, with
  Pillow's DecompressionBombWarning turned into an error as well;
* the variant fits inside ``max_size`` x ``max_size`` with the aspect ratio kept and is never
  larger than the source; JPEG sources are decoded at a reduced scale when that is enough
  (``Image.draft``, through ``Image.thumbnail``), which makes a 256 px thumbnail of a
  24-megapixel photo cheap;
* the EXIF orientation is applied, an animation gives its first frame, CMYK and images with an
  ICC profile are converted to sRGB, transparency is kept for PNG and WebP and flattened on
  white for JPEG.

This module bounds neither memory nor time: it is meant to run in a worker process whose
limits do (``davserver.imaging.pool``). It sets process-wide warning filters while it runs, so
it is not for use from several threads at once.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import BinaryIO

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from davserver.imaging.spec import (
    INPUT_FORMATS,
    OUTPUT_FORMATS,
    ImageTooLarge,
    InvalidImage,
    RenderedImage,
    UnsupportedImage,
    VariantSpec,
)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SAVE_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
# What hostile or damaged input makes Pillow's decoders raise, besides OSError.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    ZeroDivisionError,
    struct.error,
    zlib.error,
)


# The signatures an image file starts with, for telling a damaged image (422) from a file
# that is no image at all (415) when Pillow can read neither.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _claimed_format(source: BinaryIO) -> str | None:
    """The format ``source``'s first bytes name, if any."""
    try:
        source.seek(0)
        head = source.read(12)
    except (OSError, ValueError):
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def open_image(
    source: BinaryIO, *, max_pixels: int, input_formats: Sequence[str] = INPUT_FORMATS
) -> Image.Image:
    """Identify ``source`` by content and read its header (no pixels yet).

    Raises UnsupportedImage when it is not one of ``input_formats``, ImageTooLarge when it has
    more than ``max_pixels`` pixels, InvalidImage when its header is damaged.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source, formats=list(input_formats))
        except UnidentifiedImageError:
            claimed = _claimed_format(source)
            if claimed in input_formats:  # its signature says so, and nothing else can be read
                raise InvalidImage(f"the image cannot be read: a damaged {claimed}") from None
            accepted = ", ".join(input_formats)
            raise UnsupportedImage(f"not an image in an accepted format ({accepted})") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise ImageTooLarge(_too_many_pixels(max_pixels)) from None
        except _DECODE_ERRORS as exc:
            raise InvalidImage(f"the image cannot be read: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage("the image has no pixels")
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(f"{width} x {height} pixels: {_too_many_pixels(max_pixels)}")
    return image


def _too_many_pixels(max_pixels: int) -> str:
    return f"the image has more than the {max_pixels} pixels allowed (a decompression bomb?)"


def has_alpha(image: Image.Image) -> bool:
    """True when the image carries transparency (an alpha channel or a transparent colour)."""
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def output_format(image: Image.Image, spec: VariantSpec) -> str:
    """The format a variant of ``image`` is written in."""
    if spec.format is not None:
        return spec.format
    return "png" if has_alpha(image) else "jpeg"


def render(
    source: BinaryIO,
    spec: VariantSpec,
    *,
    max_pixels: int,
    input_formats: Sequence[str] = INPUT_FORMATS,
) -> RenderedImage:
    """Make the variant ``spec`` of the image in ``source``.

    Raises UnsupportedImage, ImageTooLarge or InvalidImage (see ``open_image``); a body that
    ends early or does not decode is InvalidImage.
    """
    if spec.max_size < 1:
        raise ValueError("max_size must be positive")
    if spec.format is not None and spec.format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {spec.format!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = open_image(source, max_pixels=max_pixels, input_formats=input_formats)
        fmt = output_format(image, spec)
        alpha = has_alpha(image)
        source_width, source_height = image.size
        try:
            small = _resized(image, spec.max_size)
            rgb = _to_output_mode(small, fmt)
            data = _encode(rgb, fmt, spec.quality)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise ImageTooLarge(_too_many_pixels(max_pixels)) from None
        except _DECODE_ERRORS as exc:
            raise InvalidImage(f"the image cannot be decoded: {exc}") from None
        finally:
            image.close()
    return RenderedImage(data, fmt, rgb.width, rgb.height, alpha, source_width, source_height)


def _resized(image: Image.Image, max_size: int) -> Image.Image:
    """The first frame, fitted inside max_size x max_size (never enlarged), upright."""
    # Palette and bilevel images would be resized with NEAREST; give them real channels.
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA" if has_alpha(image) else "RGB")
    elif image.mode in ("L", "RGB") and "transparency" in image.info:
        # A key colour (PNG's tRNS) marks transparent pixels only while they keep it
        # exactly: resampled, the edges would come out as opaque pixels of that colour.
        image = image.convert("RGBA")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    elif image.mode in ("YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    # For JPEG this first asks the decoder for a 1/2, 1/4 or 1/8 scale (draft), then reduces
    # by whole factors before the final Lanczos pass: cheap however big the source is.
    image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    # Resizing to a square box is the same before or after a rotation, so the (cheaper)
    # transpose runs on the small image.
    upright = ImageOps.exif_transpose(image)
    return upright if upright is not None else image


def _to_output_mode(image: Image.Image, fmt: str) -> Image.Image:
    """sRGB (or grey) pixels in a mode ``fmt`` can hold; alpha kept unless ``fmt`` is JPEG."""
    if image.mode in ("I", "F"):
        return _stretch_to_l(image)
    if has_alpha(image):
        rgba = _srgb(image.convert("RGBA"))
        return _flatten(rgba) if fmt == "jpeg" else rgba
    if image.mode == "L" and fmt != "webp":  # WebP holds only RGB(A)
        return image
    return _srgb(image)


def _srgb(image: Image.Image) -> Image.Image:
    """RGB or RGBA pixels in sRGB: converted with the embedded ICC profile when there is one
    (CMYK photos, Adobe RGB), else with Pillow's plain conversion."""
    if image.mode == "RGBA":
        alpha = image.getchannel("A")
        rgba = _srgb(image.convert("RGB"))
        rgba.putalpha(alpha)
        return rgba
    profile = image.info.get("icc_profile")
    if profile and image.mode in ("RGB", "CMYK"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            converted = None  # a broken profile: fall back to the plain conversion
        if converted is not None:
            converted.info.pop("icc_profile", None)
            return converted
    rgb = image.convert("RGB")
    rgb.info.pop("icc_profile", None)
    return rgb


def _flatten(rgba: Image.Image) -> Image.Image:
    """An RGBA image composed onto white (JPEG has no transparency)."""
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _stretch_to_l(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit or float grey as 8-bit grey. Values within the range of 16 bits (all
    of a 16-bit image's), or of 0..1 for floats, keep their brightness: stretching each
    image's own range to 0..255 made a uniform white or grey image black, and a dark one
    bright. Values outside those ranges (their scale unknown) are stretched."""
    extrema = image.getextrema()
    assert isinstance(extrema[0], int | float) and isinstance(extrema[1], int | float)
    low, high = float(extrema[0]), float(extrema[1])
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        low, span = 0.0, 1.0
    elif low >= 0.0 and high <= 65535.0:
        low, span = 0.0, 65535.0
    else:
        span = high - low or 1.0
    scaled = image.convert("F").point(lambda v: (v - low) * (255.0 / span))
    return scaled.convert("L")


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    out = io.BytesIO()
    if fmt == "jpeg":
        image.save(out, "JPEG", quality=quality, optimize=False, progressive=False)
    elif fmt == "png":
        image.save(out, "PNG", compress_level=6)
    else:
        image.save(out, "WEBP", quality=quality, method=4)
    return out.getvalue()
