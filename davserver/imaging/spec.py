"""What a conversion is asked for and gives back, and how it can fail, without Pillow.

The server process needs only these names: Pillow (``render``) is imported by the image worker
processes, so a server that never makes a thumbnail never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from davserver.errors import Unprocessable, UnsupportedMedia

# Formats a source may have, as Pillow names them. TIFF and BMP decoders have had more security
# bugs than the others; a deployment can drop them (images.input_formats).
INPUT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp")
MIME_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
# Lossless output ignores the quality level; it is recorded as 0 so it does not multiply rows.
LOSSLESS_QUALITY = 0


class UnsupportedImage(UnsupportedMedia):
    """Not an image, or an image in a format that is not accepted."""


class InvalidImage(Unprocessable):
    """An image of an accepted format that cannot be decoded (truncated, corrupt)."""


class ImageTooLarge(Unprocessable):
    """More pixels than allowed: a possible decompression bomb."""


@dataclass(frozen=True)
class VariantSpec:
    """What to make: the longer side's bound, the output format and its quality.

    ``format`` None means "choose": JPEG for an opaque image, PNG for one with transparency
    (both are read by every client; WebP only when asked for).
    """

    max_size: int
    format: str | None
    quality: int


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    format: str  # one of OUTPUT_FORMATS
    width: int
    height: int
    source_alpha: bool  # whether the source had transparency (whatever the output keeps)
    # The source's size as stored, before it was turned upright (0: not told).
    source_width: int = 0
    source_height: int = 0
