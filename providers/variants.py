"""GET and HEAD of an image variant: ``<file>?thumbnail=<size>`` or ``<file>?preview=<size>``,
of the current version, or of an older one (``&version=N``, or on its entry in ``/versions/``).

WsgiDAV's GET knows one representation per resource, so the provider hands these requests
here. The service checks who may see the variant and finds or makes it; this module only
speaks HTTP: the ETag (the source's SHA-256 and the variant's parameters, so it is known
before anything is looked up and If-None-Match is answered at once), long private caching,
and the bytes from the blob store. A preview sent is logged as a download of its file (it needs
the download right: it is the picture itself); a thumbnail is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import parse_qs

from wsgidav import util

from davserver.errors import BadRequest, NotFound, PreconditionFailed
from davserver.services.variant_policy import PREVIEW, VARIANT_TYPES
from providers.conditions import matches_etag
from providers.errors import dav_errors
from providers.resources import actor_of

# Authenticated content: caches shared between users must not keep it. No variant's URL names
# fixed bytes: the file's shows its newest version, a version's can name another file's once
# the path is renamed and uploaded again (and the newest version may be replaced in place). A
# browser asks again each time, and the ETag makes that a 304 without a body.
CACHE_CONTROL = "private, no-cache"


def wants_variant(environ: dict[str, Any]) -> bool:
    """True when a GET or HEAD asks for a thumbnail or preview instead of the file itself."""
    query = environ.get("QUERY_STRING", "")
    return bool(query) and any(kind in _params(environ) for kind in VARIANT_TYPES)


def respond_variant(res: Any, environ: dict[str, Any], start_response: Any) -> Any:
    """Answer a variant request for resource ``res``: 200, 304 or a mapped domain error."""
    service = res.provider.variants
    # A file's resource shows its current version; an entry of /versions/ its own.
    variant_of = getattr(res, "variant_of", None)
    view, version = variant_of() if variant_of else (getattr(res, "view", None), None)
    with dav_errors():
        if view is None:
            raise BadRequest("only files have thumbnails or previews")
        request = service.request(res.rights, view, _params(environ), version=version)
        etag = f'"{request.etag}"'
        headers = [("ETag", etag), ("Cache-Control", CACHE_CONTROL)]
        if_match = environ.get("HTTP_IF_MATCH")
        if if_match is not None and not matches_etag(if_match, res, request.etag, weak=False):
            raise PreconditionFailed("If-Match names another variant")
        if_none_match = environ.get("HTTP_IF_NONE_MATCH")
        if if_none_match is not None and matches_etag(if_none_match, None, request.etag, weak=True):
            return _not_modified(start_response, headers)
        variant = service.get(request)
        # "*": any variant, once it is known to exist (RFC 9110 13.1.2)
        if if_none_match is not None and matches_etag(if_none_match, variant, None, weak=True):
            return _not_modified(start_response, headers)
        body = None
        if environ["REQUEST_METHOD"] == "GET":
            try:
                body = service.open(variant)
            except NotFound:  # its bytes were lost: a variant is a cache, made again
                variant = service.get(request, check_bytes=True)
                body = service.open(variant)
        if body is not None and request.variant_type == PREVIEW:  # the picture itself
            res.provider.files.record_download(
                actor_of(environ),
                view.id,
                request.source.version_id,
                size=variant.size,
                version_no=version.version_no if version is not None else None,
                variant=f"{PREVIEW} {variant.width}x{variant.height} {variant.format}",
            )
    start_response(
        "200 OK",
        [
            ("Content-Type", variant.content_type),
            ("Content-Length", str(variant.size)),
            *headers,
            ("X-Content-Type-Options", "nosniff"),
            ("Date", util.get_rfc1123_time()),
        ],
    )
    if body is None:
        return [b""]
    block_size = int(environ.get("wsgidav.config", {}).get("block_size", 256 * 1024))
    return _FileBody(body, block_size)


def _params(environ: dict[str, Any]) -> dict[str, list[str]]:
    return parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)


def _not_modified(start_response: Any, headers: list[tuple[str, str]]) -> list[bytes]:
    # Content-Length: 0, or WsgiDAV closes the connection (davserver.app drops it).
    not_modified = [*headers, ("Content-Length", "0"), ("Date", util.get_rfc1123_time())]
    start_response("304 Not Modified", not_modified)
    return [b""]


class _FileBody:
    """The blob's bytes in chunks; the file is closed when the server closes the response."""

    def __init__(self, reader: BinaryIO, block_size: int) -> None:
        self._reader = reader
        self._block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._reader.read(self._block_size):
            yield chunk

    def close(self) -> None:
        self._reader.close()
