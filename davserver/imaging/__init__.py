"""Image variants without a database: the Pillow renderer and the worker processes it runs in.

``render`` holds the image rules (formats accepted by content, pixel limit, orientation,
first frame, colour, transparency); ``pool`` runs it in worker processes with bounded memory,
time and concurrency; ``worker`` is that process, and ``protocol`` what they say to each other.
Caching and permissions live in ``davserver.services.variants``.

Only ``render`` and ``worker`` import Pillow, and only worker processes import them: this
package's names come from ``spec`` and ``pool``, so the server does not load Pillow (about
2.5 MiB) to serve files.
"""

from davserver.imaging.pool import PoolLimits, RendererBusy, RenderFailed, RenderPool
from davserver.imaging.spec import (
    INPUT_FORMATS,
    MIME_TYPES,
    OUTPUT_FORMATS,
    ImageTooLarge,
    InvalidImage,
    RenderedImage,
    UnsupportedImage,
    VariantSpec,
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
]
