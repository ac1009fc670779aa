"""Image variants without a database: the Pillow renderer and the worker processes it runs in.

``render`` holds the image rules (formats accepted by content, pixel limit, orientation,
first frame, colour, transparency); ``pool`` runs it in worker processes with bounded memory,
time and concurrency; ``worker`` is that process. Caching and permissions live in
``davserver.services.variants``.
"""

from davserver.imaging.pool import PoolLimits, RendererBusy, RenderFailed, RenderPool
from davserver.imaging.render import (
    INPUT_FORMATS,
    MIME_TYPES,
    OUTPUT_FORMATS,
    ImageTooLarge,
    InvalidImage,
    RenderedImage,
    UnsupportedImage,
    VariantSpec,
    render,
)

__all__ = [
    "INPUT_FORMATS",
    "MIME_TYPES",
    "OUTPUT_FORMATS",
    "ImageTooLarge",
    "InvalidImage",
    "PoolLimits",
    "RenderFailed",
    "RenderPool",
    "RenderedImage",
    "RendererBusy",
    "UnsupportedImage",
    "VariantSpec",
    "render",
]
