"""Image variants (thumbnails and previews): finding, making and caching them.

A variant belongs to the bytes of a version, not to the file: it is keyed by the source blob
(its SHA-256), the variant type, the size, the format and the quality level, so a new version
gets new variants and a version whose bytes were seen before reuses theirs. A variant is made
on first request by the worker pool (``davserver.imaging``), stored as a blob and recorded in
``image_variants``; the unique key on that table decides between two servers that made the
same variant at once, and within one process the second request waits for the first one's
result instead of converting again. Failures are remembered for a few minutes, so a hostile
file cannot keep a worker busy by being asked for again and again. A variant is only a cache:
one whose bytes the blob store lost or holds cut short is forgotten and made again when a GET
finds it so, or by ``davserver variants rebuild``.

What a client may ask for, and who may see a variant, is ``davserver.services.variant_policy``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import sqlalchemy as sa

from davserver.blobstore import BlobStore, StoredBlob
from davserver.config import ImageSettings
from davserver.db import Base, Database
from davserver.db.dialect import for_bind, insert_or_ignore
from davserver.db.types import utcnow
from davserver.errors import (
    BadRequest,
    DomainError,
    Forbidden,
    NotFound,
    Unprocessable,
    UnsupportedMedia,
)
from davserver.imaging import (
    PoolLimits,
    RenderedImage,
    RenderPool,
    VariantSpec,
)
from davserver.imaging.spec import LOSSLESS_QUALITY
from davserver.models import NodeKind
from davserver.services import blob_refs
from davserver.services.files import FileService
from davserver.services.lost_bytes import open_stored
from davserver.services.permissions import Perm
from davserver.services.tree import NodeView
from davserver.services.variant_policy import (
    PREVIEW,
    THUMBNAIL,
    Variant,
    VariantPolicy,
    VariantRequest,
    VariantSource,
    may_preview,
)
from davserver.services.versions import VersionInfo

log = logging.getLogger(__name__)

_FAILURE_TTL = 300.0  # seconds a failed conversion is answered from memory
_FAILURES_KEPT = 1024
_BACKGROUND_QUEUE = 64  # uploads waiting for background thumbnails; more are skipped


@dataclass(frozen=True)
class RebuildResult:
    made: int
    kept: int


class VariantService:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        files: FileService,
        policy: VariantPolicy,
        pool: RenderPool,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.files = files
        self.policy = policy
        self.pool = pool
        self.renders = 0  # conversions this process has run (tests and the bench read it)
        self._guard = threading.Lock()
        self._flights: dict[tuple[Any, ...], list[Any]] = {}
        self._failures: dict[tuple[Any, ...], tuple[float, type[DomainError], str]] = {}
        self._background: ThreadPoolExecutor | None = None
        self._pending = 0

    @classmethod
    def from_settings(
        cls, db: Database, blobs: BlobStore, files: FileService, images: ImageSettings
    ) -> VariantService:
        policy = VariantPolicy.from_settings(images)
        pool = RenderPool(
            PoolLimits(
                workers=max(1, images.workers),
                timeout=float(max(1, images.timeout)),
                memory_mb=images.memory_limit_mb,
                max_pixels=images.max_pixels,
                input_formats=policy.input_formats,
                queue_wait=float(max(1, images.timeout)),
            )
        )
        return cls(db, blobs, files, policy, pool)

    # -------------------------------------------------------------------------- asking

    def request(
        self,
        rights: Perm,
        view: NodeView,
        params: Mapping[str, Sequence[str]],
        *,
        version: VersionInfo | None = None,
    ) -> VariantRequest:
        """Check that someone with ``rights`` on ``view`` may see a variant of it (see
        ``may_preview``) and parse what is asked for: of its current version, or of
        ``version`` (one of its older ones).

        Raises NotFound when the actor may not see the file, Forbidden for a preview without
        the download right, BadRequest for a folder or for
        sizes, formats or qualities not allowed, UnsupportedMedia for a file with no content.
        """
        if not may_preview(rights):
            raise NotFound("no such file")
        if view.kind != NodeKind.FILE:
            raise BadRequest("folders have no thumbnails or previews")
        variant_type, spec = self.policy.parse(params)
        if not may_preview(rights, variant_type):
            raise Forbidden("a preview shows the picture itself: it needs the download right")
        if version is None:
            sha256, key, version_id = view.sha256, view.storage_key, view.current_version_id
            size = view.size
        else:
            sha256, key, version_id = version.sha256, version.storage_key, version.id
            size = version.size
        if sha256 is None or key is None or size == 0:
            raise UnsupportedMedia("the file is empty")
        source = VariantSource(sha256, key, version_id, view.name, size)
        may_download = bool(rights & Perm.DOWNLOAD)
        return VariantRequest(source, variant_type, spec, may_download=may_download)

    def has_preview(self, view: NodeView) -> bool:
        """For listings (the has-preview property): a non-empty file that looks like an image.

        Decided by type and name only; nothing is read or converted.
        """
        return (
            not view.is_folder
            and view.size > 0
            and self.policy.looks_like_image(view.name, view.mime_type)
        )

    # ----------------------------------------------------------------------- getting one

    def get(self, request: VariantRequest, *, check_bytes: bool = False) -> Variant:
        """The stored variant, made now if it does not exist yet; with ``check_bytes`` (when
        ``open`` found them lost), also when the blob store lost its bytes or holds them cut
        short. Not checked otherwise: a stat, or on S3 a round trip, for every thumbnail.

        Raises UnsupportedMedia (not an accepted image), Unprocessable (damaged, too many
        pixels, over the time or memory a conversion may use), Unavailable (every worker busy),
        Forbidden when the asker may not download the file and the variant is the whole
        picture: an image no bigger than the thumbnail (an icon, a signature, a QR code).
        """
        variant = self._obtain(request, check_bytes)[0]
        if not request.may_download and self._is_whole_picture(request, variant):
            raise Forbidden(
                "this image is no bigger than the thumbnail, which would be the picture "
                "itself: it needs the download right"
            )
        return variant

    def _is_whole_picture(self, request: VariantRequest, variant: Variant) -> bool:
        """Whether ``variant`` has every pixel of its source (it was not made smaller)."""
        if max(variant.width, variant.height) < request.spec.max_size:
            return True  # a smaller image fits the box as it is
        size = variant.source_size
        if size is None:  # made before source sizes were kept: make it again to learn it
            rendered = self._render(request)
            size = (rendered.source_width, rendered.source_height)
            with self.db.write() as session:
                params = {"sha256": request.source.sha256, "w": size[0], "h": size[1]}
                session.execute(_KEEP_SOURCE_SIZE, params)
        return sorted(size) == sorted((variant.width, variant.height))  # upright or not

    def _obtain(self, request: VariantRequest, check_bytes: bool) -> tuple[Variant, bool]:
        """(the variant, whether this call made it). With ``check_bytes``, a stored one whose
        bytes the blob store has lost or holds cut short is forgotten and made again."""
        found = self._lookup(request)
        if found is not None and (not check_bytes or self._held(found)):
            return found, False
        with self._single_flight(request.key):
            found = self._lookup(request)
            if found is not None:
                if not check_bytes or self._held(found):  # made again meanwhile
                    return found, False
                self._forget_lost(request, found)
            self._raise_remembered_failure(request.key)
            try:
                rendered = self._render(request)
            except (UnsupportedMedia, Unprocessable) as exc:
                self._remember_failure(request.key, exc)
                raise
            if rendered.source_alpha and rendered.format == "jpeg":
                # A transparent image's JPEG never exists without its PNG (see _lookup): the
                # PNG first, so that when it cannot be made (every worker busy) neither is
                # stored. Stored alone, the JPEG was served for good where the PNG belongs.
                png = VariantSpec(request.spec.max_size, "png", LOSSLESS_QUALITY)
                self._obtain(replace(request, spec=png), check_bytes)
            variant = self._store(request, rendered)
        return variant, True

    def open(self, variant: Variant) -> BinaryIO:
        """A reader of a variant's bytes; NotFound when the blob store lost them or holds
        them cut short (``open_stored``: a 200 that stalled, with nothing logged); then
        ``get(request, check_bytes=True)`` makes it again."""
        return open_stored(self.blobs, variant.storage_key, "the variant", variant.size)

    def _held(self, variant: Variant) -> bool:
        """Whether the blob store holds the whole of ``variant``'s bytes (one stat, or one
        HeadObject)."""
        return self.blobs.size_of(variant.storage_key) == variant.size

    def _forget_lost(self, request: VariantRequest, variant: Variant) -> None:
        """Drop the row of ``variant``, found for ``request``, whose bytes the blob store has
        lost or holds cut short, so that it is made again; only while the row still names
        those bytes, as another server may have made it again meanwhile. Its blob row is
        left to gc (which removes it once nothing references it) or to the variant made
        again, which puts the same bytes back under it."""
        log.warning(
            "%s: the %s %d of %s is missing from the blob store or cut short (%s): making it again",
            request.source.name,
            request.variant_type,
            request.spec.max_size,
            request.source.sha256,
            variant.storage_key,
        )
        quality = LOSSLESS_QUALITY if variant.format == "png" else request.spec.quality
        params = {
            "sha256": request.source.sha256,
            "variant_type": request.variant_type,
            "max_size": request.spec.max_size,
            "format": variant.format,
            "quality_level": quality,
            "storage_key": variant.storage_key,
        }
        with self.db.write() as session:
            session.execute(_FORGET_VARIANT, params)

    def _lookup(self, request: VariantRequest) -> Variant | None:
        """The stored variant ``request`` names, or None.

        Without a format the image decides: PNG when it has transparency, else JPEG. That is
        known without reading the source: a PNG variant is RGBA exactly when its source had
        transparency (its header says so), and the JPEG of a transparent image is only ever
        stored together with its PNG, so a JPEG found without a PNG is of an opaque image.
        """
        spec = request.spec
        if spec.format is None:
            candidates = [("jpeg", spec.quality), ("png", LOSSLESS_QUALITY)]
        else:
            candidates = [(spec.format, spec.quality)] * 2
        params = {
            "sha256": request.source.sha256,
            "variant_type": request.variant_type,
            "max_size": spec.max_size,
            "f1": candidates[0][0],
            "q1": candidates[0][1],
            "f2": candidates[1][0],
            "q2": candidates[1][1],
        }
        with self.db.connect() as conn:
            rows = {row.format: row for row in conn.execute(_LOOKUP, params)}
        if spec.format is not None:
            row = rows.get(spec.format)
        else:
            png = rows.get("png")
            row = png if png is not None and self._png_has_alpha(png.storage_key) else None
            row = row or rows.get("jpeg")
        if row is None:
            return None
        source_size = None
        if row.source_width is not None and row.source_height is not None:
            source_size = (row.source_width, row.source_height)
        return Variant(
            storage_key=row.storage_key,
            size=row.size_bytes,
            format=row.format,
            width=row.width,
            height=row.height,
            etag=request.etag,
            source_size=source_size,
        )

    def _png_has_alpha(self, storage_key: str) -> bool:
        """Whether a PNG variant (written by us, so trusted) is RGBA or grey with alpha.

        True when its header cannot be read (its bytes lost or cut short): the PNG is taken,
        found lost and made again when a GET opens it, which tells; the JPEG of a transparent image
        would be served for it.
        """
        try:
            with self.blobs.open(storage_key) as fh:
                head = fh.read(26)
        except FileNotFoundError:
            return True
        if len(head) < 26:
            return True
        # Signature (8), IHDR length and type (8), width, height, bit depth; then colour type.
        return head[12:16] == b"IHDR" and head[25] in (4, 6)

    def _render(self, request: VariantRequest) -> RenderedImage:
        source = request.source
        with open_stored(self.blobs, source.storage_key, source.name, source.size) as reader:
            rendered = self.pool.render(reader, request.spec)
        with self._guard:
            self.renders += 1
        return rendered

    def _store(self, request: VariantRequest, rendered: RenderedImage) -> Variant:
        writer = self.blobs.writer()
        try:
            writer.write(rendered.data)
        except BaseException:
            writer.abort()
            raise
        stored = writer.finish()
        quality = LOSSLESS_QUALITY if rendered.format == "png" else request.spec.quality
        try:
            self._record(request, rendered, stored, quality)
        finally:
            # The writer's spare copy matters only until the referencing transaction ended.
            self.blobs.release(stored)
        # Whoever won the unique key, the row exists now: answer with what it holds.
        exact = replace(request, spec=VariantSpec(request.spec.max_size, rendered.format, quality))
        found = self._lookup(exact)
        if found is None:
            raise NotFound("the variant vanished while it was being stored")
        return replace(found, etag=request.etag)

    def _record(
        self, request: VariantRequest, rendered: RenderedImage, stored: StoredBlob, quality: int
    ) -> None:
        """One transaction: the variant's blob row and its image_variants row, the blob's
        bytes in place (``blob_refs``).

        Two servers that made the same variant at once both get here; the unique key keeps
        the first row and the second insert does nothing. Pillow writes the same bytes for the
        same input and settings, so the loser's blob is the winner's: nothing is left over.
        """

        def work(placed: uuid.UUID | None) -> None:
            with self.db.write() as session:
                source_id = session.scalar(_BLOB_ID, {"sha256": request.source.sha256})
                if source_id is None:
                    raise NotFound("the image's bytes are no longer stored")
                variant_blob_id = blob_refs.reference_id(session, self.blobs, stored, placed)
                session.execute(
                    for_bind(_INSERT_VARIANT, session).values(
                        id=uuid.uuid4(),
                        version_id=request.source.version_id,
                        source_blob_id=source_id,
                        variant_type=request.variant_type,
                        max_size=request.spec.max_size,
                        quality_level=quality,
                        format=rendered.format,
                        blob_id=variant_blob_id,
                        width=rendered.width,
                        height=rendered.height,
                        source_width=rendered.source_width or None,
                        source_height=rendered.source_height or None,
                        size_bytes=stored.size,
                        created_at=utcnow(),
                    )
                )
                blob_refs.referenced(session, self.blobs, stored)

        blob_refs.placing(self.db, self.blobs, stored, work)

    @contextmanager
    def _single_flight(self, key: tuple[Any, ...]) -> Iterator[None]:
        """One conversion per variant at a time in this process; later askers wait for it."""
        with self._guard:
            entry = self._flights.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._flights[key]

    def _remember_failure(self, key: tuple[Any, ...], exc: DomainError) -> None:
        with self._guard:
            if len(self._failures) >= _FAILURES_KEPT:
                self._failures.pop(next(iter(self._failures)))
            self._failures[key] = (time.monotonic() + _FAILURE_TTL, type(exc), str(exc))

    def _raise_remembered_failure(self, key: tuple[Any, ...]) -> None:
        with self._guard:
            remembered = self._failures.get(key)
            if remembered is None:
                return
            expires, kind, message = remembered
            if expires < time.monotonic():
                del self._failures[key]
                return
        raise kind(message)

    # ------------------------------------------------------------- after upload, rebuild

    def after_upload(self, view: NodeView) -> None:
        """With ``images.render_on_upload``, make the thumbnail sizes of a new image in the
        background (one thread, so uploads never wait and requests keep a worker)."""
        if not self.policy.render_on_upload or not self.has_preview(view):
            return
        if view.sha256 is None or view.storage_key is None:
            return
        source = VariantSource(
            view.sha256, view.storage_key, view.current_version_id, view.name, view.size
        )
        with self._guard:
            if self._pending >= _BACKGROUND_QUEUE:
                log.info("background thumbnails skipped for %s: queue full", view.name)
                return
            self._pending += 1
            if self._background is None:
                self._background = ThreadPoolExecutor(1, thread_name_prefix="thumbnails")
            background = self._background
        background.submit(self._render_in_background, source)

    def _render_in_background(self, source: VariantSource) -> None:
        try:
            self.make_defaults(source, sizes=self.policy.sizes[THUMBNAIL])
        except DomainError as exc:
            log.info("no background thumbnail for %s: %s", source.name, exc)
        except Exception:
            log.exception("background thumbnail of %s failed", source.name)
        finally:
            with self._guard:
                self._pending -= 1

    def make_defaults(
        self, source: VariantSource, *, sizes: Sequence[int], variant_type: str = THUMBNAIL
    ) -> RebuildResult:
        """Make (if missing) the variants of ``source`` a plain ``?thumbnail=N`` asks for."""
        made = kept = 0
        for size in sizes:
            request = VariantRequest(
                source, variant_type, VariantSpec(size, None, self.policy.default_quality)
            )
            if self._obtain(request, check_bytes=True)[1]:
                made += 1
            else:
                kept += 1
        return RebuildResult(made, kept)

    def sources(self) -> list[VariantSource]:
        """The current version of every live file that looks like an image, once per blob."""
        seen: set[str] = set()
        out: list[VariantSource] = []
        with self.db.read() as session:
            for row in session.execute(_SOURCES.execution_options(yield_per=1000)):
                if row.sha256 in seen or not self.policy.looks_like_image(row.name, row.mime):
                    continue
                seen.add(row.sha256)
                out.append(
                    VariantSource(row.sha256, row.storage_key, row.version_id, row.name, row.size)
                )
        return out

    def rebuild(self, source: VariantSource, *, force: bool = False) -> RebuildResult:
        """Make the default thumbnail and preview sizes of ``source``; with ``force`` every
        variant stored for it is dropped first (after a change of Pillow or settings)."""
        if force:
            with self.db.write() as session:
                source_id = session.scalar(_BLOB_ID, {"sha256": source.sha256})
                if source_id is not None:
                    session.execute(_DELETE_VARIANTS, {"source_blob_id": source_id})
            with self._guard:
                for key in [k for k in self._failures if k[0] == source.sha256]:
                    del self._failures[key]
        thumbnails = self.make_defaults(source, sizes=self.policy.sizes[THUMBNAIL])
        previews = self.make_defaults(
            source, sizes=self.policy.sizes[PREVIEW], variant_type=PREVIEW
        )
        return RebuildResult(thumbnails.made + previews.made, thumbnails.kept + previews.kept)

    def close(self) -> None:
        with self._guard:
            background, self._background = self._background, None
        if background is not None:
            background.shutdown(wait=False, cancel_futures=True)
        self.pool.close()


_iv = Base.metadata.tables["image_variants"]
_n = Base.metadata.tables["nodes"]
_v = Base.metadata.tables["file_versions"]
_b = Base.metadata.tables["blobs"]
_src = _b.alias("src")
_out = _b.alias("out")
_LOOKUP = (
    sa.select(
        _iv.c.format,
        _iv.c.width,
        _iv.c.height,
        _iv.c.source_width,
        _iv.c.source_height,
        _out.c.size_bytes,
        _out.c.storage_key,
    )
    .select_from(
        _iv.join(_src, _src.c.id == _iv.c.source_blob_id).join(_out, _out.c.id == _iv.c.blob_id)
    )
    .where(
        _src.c.sha256 == sa.bindparam("sha256"),
        _iv.c.variant_type == sa.bindparam("variant_type"),
        _iv.c.max_size == sa.bindparam("max_size"),
        sa.or_(
            sa.and_(_iv.c.format == sa.bindparam("f1"), _iv.c.quality_level == sa.bindparam("q1")),
            sa.and_(_iv.c.format == sa.bindparam("f2"), _iv.c.quality_level == sa.bindparam("q2")),
        ),
    )
)
_INSERT_VARIANT = insert_or_ignore(
    _iv, "source_blob_id", "variant_type", "max_size", "format", "quality_level"
)
_BLOB_ID = sa.select(_b.c.id).where(_b.c.sha256 == sa.bindparam("sha256"))
# The source's size, learnt for the variants of one source made before sizes were kept.
_KEEP_SOURCE_SIZE = (
    _iv.update()
    .where(_iv.c.source_blob_id == _BLOB_ID.scalar_subquery(), _iv.c.source_width.is_(None))
    .values(source_width=sa.bindparam("w"), source_height=sa.bindparam("h"))
)
# One variant (by its unique key) while it is stored in the blob under "storage_key".
_FORGET_VARIANT = _iv.delete().where(
    _iv.c.source_blob_id == _BLOB_ID.scalar_subquery(),
    _iv.c.variant_type == sa.bindparam("variant_type"),
    _iv.c.max_size == sa.bindparam("max_size"),
    _iv.c.format == sa.bindparam("format"),
    _iv.c.quality_level == sa.bindparam("quality_level"),
    sa.exists().where(_b.c.id == _iv.c.blob_id, _b.c.storage_key == sa.bindparam("storage_key")),
)
_DELETE_VARIANTS = _iv.delete().where(
    _iv.c.source_blob_id == sa.bindparam("source_blob_id", type_=sa.Uuid)
)
_SOURCES = (
    sa.select(
        _n.c.name,
        _n.c.mime_type.label("mime"),
        _n.c.current_version_id.label("version_id"),
        _b.c.sha256,
        _b.c.storage_key,
        _b.c.size_bytes.label("size"),
    )
    .select_from(_n.join(_v, _v.c.id == _n.c.current_version_id).join(_b, _b.c.id == _v.c.blob_id))
    .where(_n.c.kind == NodeKind.FILE.value, _n.c.deleted_at.is_(None), _b.c.size_bytes > 0)
    .order_by(_n.c.created_at, _n.c.id)
)
