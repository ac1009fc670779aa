"""What clients may ask of image variants, and who may see them: no database here.

``VariantPolicy`` holds the sizes, qualities and source formats the ``images`` settings allow
and turns a request's query (``?thumbnail=256&format=webp&quality=80``) into a ``VariantSpec``;
``may_preview`` is the one place that decides who may see a variant. ``VariantRequest`` is what
``VariantService.get`` takes: a checked request for one variant of one version's bytes.
"""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from davserver.config import ConfigError, ImageSettings
from davserver.errors import BadRequest
from davserver.imaging import INPUT_FORMATS, MIME_TYPES, OUTPUT_FORMATS, VariantSpec
from davserver.imaging.spec import LOSSLESS_QUALITY
from davserver.services.permissions import Perm

THUMBNAIL = "thumbnail"
PREVIEW = "preview"
VARIANT_TYPES = (THUMBNAIL, PREVIEW)
_FORMAT_ALIASES = {"jpg": "jpeg"}
# The MIME types and file name extensions of each accepted source format (has-preview).
_SOURCE_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "JPEG": (("image/jpeg", "image/pjpeg"), (".jpg", ".jpeg", ".jpe", ".jfif")),
    "PNG": (("image/png", "image/apng"), (".png", ".apng")),
    "WEBP": (("image/webp",), (".webp",)),
    "GIF": (("image/gif",), (".gif",)),
    "TIFF": (("image/tiff",), (".tif", ".tiff")),
    "BMP": (("image/bmp", "image/x-bmp", "image/x-ms-bmp"), (".bmp", ".dib")),
}


def may_preview(rights: Perm, variant_type: str = THUMBNAIL) -> bool:
    """Whether someone holding ``rights`` on a file may see a variant of this type of it: the
    one place that decides.

    Reading is enough for a thumbnail (a view-only share shows thumbnails), unlike the
    original bytes, which need the download permission. So does a preview: at 1024 or 2048
    pixels it is the picture itself, for most photos.
    """
    needed = Perm.READ | Perm.DOWNLOAD if variant_type == PREVIEW else Perm.READ
    return rights & needed == needed


@dataclass(frozen=True)
class VariantPolicy:
    """What clients may ask for, parsed once from the ``images`` settings."""

    sizes: Mapping[str, tuple[int, ...]]
    qualities: tuple[int, ...]
    default_quality: int
    input_formats: tuple[str, ...]
    render_on_upload: bool = False

    @classmethod
    def from_settings(cls, images: ImageSettings) -> VariantPolicy:
        """Raises ConfigError for sizes, qualities or formats that make no sense."""
        qualities = _int_list("images.qualities", images.qualities, 1, 95)
        if images.default_quality not in qualities:
            raise ConfigError(
                f"images.default_quality: {images.default_quality} is not one of "
                f"images.qualities ({images.qualities})"
            )
        formats = tuple(f.strip().upper() for f in images.input_formats.split(",") if f.strip())
        unknown = sorted(set(formats) - set(INPUT_FORMATS))
        if not formats or unknown:
            raise ConfigError(
                f"images.input_formats: {', '.join(unknown) or 'empty'}; "
                f"choose among {', '.join(INPUT_FORMATS)}"
            )
        return cls(
            sizes={
                THUMBNAIL: _int_list("images.thumbnail_sizes", images.thumbnail_sizes, 1, 8192),
                PREVIEW: _int_list("images.preview_sizes", images.preview_sizes, 1, 8192),
            },
            qualities=qualities,
            default_quality=images.default_quality,
            input_formats=formats,
            render_on_upload=images.render_on_upload,
        )

    def parse(self, params: Mapping[str, Sequence[str]]) -> tuple[str, VariantSpec]:
        """(variant type, spec) from query parameters; BadRequest naming what is allowed."""
        kinds = [kind for kind in VARIANT_TYPES if kind in params]
        if len(kinds) != 1:
            raise BadRequest("ask for either ?thumbnail=<size> or ?preview=<size>")
        kind = kinds[0]
        allowed = self.sizes[kind]
        size = _one_int(params, kind)
        if size not in allowed:
            raise BadRequest(f"{kind} sizes allowed: {', '.join(map(str, allowed))}")
        fmt: str | None = None
        if "format" in params:
            text = _one(params, "format").strip().lower()
            fmt = _FORMAT_ALIASES.get(text, text)
            if fmt not in OUTPUT_FORMATS:
                raise BadRequest(f"formats allowed: {', '.join(OUTPUT_FORMATS)}")
        quality = self.default_quality
        if "quality" in params:
            quality = _one_int(params, "quality")
            if quality not in self.qualities:
                raise BadRequest(f"qualities allowed: {', '.join(map(str, self.qualities))}")
        if fmt == "png":
            quality = LOSSLESS_QUALITY
        return kind, VariantSpec(max_size=size, format=fmt, quality=quality)

    def looks_like_image(self, name: str, mime_type: str | None) -> bool:
        """By declared type or name only (no bytes read): may this file have a preview?"""
        guessed, _ = mimetypes.guess_type(name)
        lowered = name.lower()
        for fmt in self.input_formats:
            types, extensions = _SOURCE_TYPES[fmt]
            if mime_type in types or guessed in types or lowered.endswith(extensions):
                return True
        return False


@dataclass(frozen=True)
class VariantSource:
    """The bytes a variant is made from: one version's blob."""

    sha256: str
    storage_key: str
    version_id: uuid.UUID | None
    name: str
    size: int  # of the blob: a stored copy of another size is damaged


@dataclass(frozen=True)
class VariantRequest:
    """A variant a caller may see, not yet looked up: what ``VariantService.get`` makes."""

    source: VariantSource
    variant_type: str
    spec: VariantSpec
    # Whether the asker may download the file: else a thumbnail that is the whole picture
    # is refused (``VariantService.get``).
    may_download: bool = True

    @property
    def etag(self) -> str:
        """Unquoted; the same for every server and for ever, as the source bytes are fixed."""
        spec = self.spec
        return (
            f"{self.source.sha256}-{self.variant_type}-{spec.max_size}-"
            f"{spec.format or 'auto'}-q{spec.quality}"
        )

    @property
    def key(self) -> tuple[str, str, int, str | None, int]:
        return (
            self.source.sha256,
            self.variant_type,
            self.spec.max_size,
            self.spec.format,
            self.spec.quality,
        )


@dataclass(frozen=True)
class Variant:
    """A stored variant, ready to be sent."""

    storage_key: str
    size: int
    format: str
    width: int
    height: int
    etag: str
    # The source image's size as stored (before it was turned upright); None when the
    # variant was made before sizes were kept.
    source_size: tuple[int, int] | None = None

    @property
    def content_type(self) -> str:
        return MIME_TYPES[self.format]


def _int_list(name: str, text: str, low: int, high: int) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not values or not all(low <= v <= high for v in values):
        raise ConfigError(f"{name}: expected integers from {low} to {high}, got {text!r}")
    return values


def _one(params: Mapping[str, Sequence[str]], name: str) -> str:
    values = params[name]
    if isinstance(values, str):
        return values
    if len(values) != 1:
        raise BadRequest(f"give {name} once")
    return values[0]


def _one_int(params: Mapping[str, Sequence[str]], name: str) -> int:
    text = _one(params, name).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 6:  # not "²" or "٢٥٦"
        raise BadRequest(f"{name} must be a whole number")
    return int(text)
