"""Test images, made with Pillow (or by hand for the hostile ones) at test time; no files, no
network. Each factory returns the encoded bytes."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

RED = (220, 20, 20)
BLUE = (20, 20, 220)
GREEN = (20, 200, 20)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def jpeg(width: int = 640, height: int = 480, color: tuple[int, int, int] = RED) -> bytes:
    return encode(Image.new("RGB", (width, height), color), "JPEG", quality=90)


def png_with_alpha(width: int = 400, height: int = 200) -> bytes:
    """Left half opaque green, right half fully transparent."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    image.paste((*GREEN, 255), (0, 0, width // 2, height))
    return encode(image, "PNG")


def webp(width: int = 500, height: int = 250) -> bytes:
    return encode(Image.new("RGB", (width, height), BLUE), "WEBP", quality=90)


def animated_gif(width: int = 300, height: int = 300) -> bytes:
    """Three frames: red, blue, green. The first frame is red."""
    frames = [Image.new("RGB", (width, height), c) for c in (RED, BLUE, GREEN)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def tiff(width: int = 600, height: int = 300) -> bytes:
    return encode(Image.new("RGB", (width, height), GREEN), "TIFF", compression="tiff_lzw")


def exif_rotated_jpeg(width: int = 400, height: int = 200) -> bytes:
    """Stored landscape, left half red and right half blue, with EXIF Orientation 6 ("rotate
    90 degrees clockwise to display"): shown upright it is portrait, red on top."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def cmyk_jpeg(width: int = 300, height: int = 200) -> bytes:
    """Pure red in CMYK (no cyan, full magenta and yellow, no black)."""
    return encode(Image.new("CMYK", (width, height), (0, 255, 255, 0)), "JPEG", quality=95)


def grey16_png(width: int = 200, height: int = 100) -> bytes:
    """16-bit grey, a ramp from 0 to 65535 left to right."""
    image = Image.new("I;16", (width, height))
    image.putdata([x * 65535 // (width - 1) for _y in range(height) for x in range(width)])
    return encode(image, "PNG")


def truncated_jpeg() -> bytes:
    data = encode(Image.effect_noise((800, 600), 64).convert("RGB"), "JPEG", quality=90)
    return data[: len(data) // 2]


def not_an_image() -> bytes:
    """Text, to be saved under an image's name."""
    return b"this is a text file pretending to be a PNG\n" * 50


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int, *, color_type: int = 2) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels but carries almost no data: a
    decompression bomb's header (a few dozen bytes, billions of pixels)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def decompression_bomb() -> bytes:
    """100,000 x 100,000 RGB claimed (30 GB decoded) in under 100 bytes."""
    return png_header_only(100_000, 100_000)


def memory_hungry_png(side: int = 12_000) -> bytes:
    """A real, valid grey PNG of ``side`` x ``side`` pixels, all black: about 140 KiB on disk,
    ``side``² bytes (144 MB) once decoded."""
    row = b"\x00" * (side + 1)  # filter byte + pixels
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(side)]
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )
