"""The WsgiDAV provider: maps URL paths to resources for the authenticated user.

``/`` is a read-only listing of the spaces; ``/files/...`` is the user's own space. Nodes read
during a request are cached in the request's environ (WsgiDAV looks the same path up several
times per request); every write clears that cache.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from wsgidav import util
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_FORBIDDEN,
    DAVError,
    PRECONDITION_CODE_PropfindFiniteDepth,
)
from wsgidav.dav_provider import DAVProvider

from davserver.errors import BadRequest
from davserver.services.actor import Actor
from davserver.services.files import FileService
from davserver.services.namespace import (
    AccessContext,
    NamespaceService,
    Reached,
    Virtual,
)
from davserver.services.permissions import Perm
from davserver.services.tree import NodeView
from davserver.services.variants import VariantService
from davserver.services.write_fence import set_write_fence
from providers.errors import dav_errors
from providers.gate import check_request, may_break_locks
from providers.listing import folder_listing, vary_on_accept, wants_zip, zip_in_query
from providers.lock_space import RequestLockSpace
from providers.lock_storage import SqlLockStorage
from providers.resources import (
    FileResource,
    FolderResource,
    VirtualCollection,
    _NodeResource,
    actor_of,
)
from providers.variants import respond_variant, wants_variant
from providers.versions import SPACE as VERSIONS
from providers.versions import respond_version, version_entry, wants_version

ResourceFactory = Callable[["DavProvider", str, dict[str, Any], Any], Any]
_CACHE_KEY = "davserver.nodes"
_ACCESS_KEY = "davserver.access"
_MISSING = object()
_NO_ZIP = (
    "only a folder of /files/, /groups/ or /shared/ is downloaded as a zip (?zip); a package's"
    " zip is /packages/<name>.zip"
)


class DavProvider(DAVProvider):
    def __init__(
        self, files: FileService, variants: VariantService, namespace: NamespaceService
    ) -> None:
        super().__init__()
        self.files = files
        self.variants = variants
        self.namespace = namespace
        # Resources for the items of spaces added to the namespace (NamespaceService.add_space):
        # item type -> factory(provider, path, environ, item).
        self.resource_factories: dict[type, ResourceFactory] = {}
        # GET <folder>?zip (providers.packages.register): (folder, environ, start_response,
        # WsgiDAV's handler) -> the answer.
        self.folder_zip: Callable[[Any, dict[str, Any], Any, Any], Any] | None = None
        # DELETE of a live item (providers.trash.register: to the trash, or for good with the
        # trash off): (actor, node id, the node as the request found it).
        self.delete_item: Callable[[Actor, uuid.UUID, NodeView | None], None] = (
            lambda actor, node_id, seen: files.delete(actor, node_id, seen=seen)
        )

    def is_readonly(self) -> bool:
        return False

    # -- lookups

    def access(self, environ: dict[str, Any]) -> AccessContext:
        """The request's access context (the user's groups and grants, read on first need)."""
        ctx = environ.get(_ACCESS_KEY)
        if ctx is None:
            ctx = environ[_ACCESS_KEY] = self.namespace.context(actor_of(environ))
        return ctx

    def get_resource_inst(self, path: str | None, environ: dict[str, Any]) -> Any:
        if path is None:
            return None  # the parent of "/" (WsgiDAV asks for it on a COPY or MOVE of "/")
        parts = [p for p in path.split("/") if p]
        cache: dict[str, Any] = environ.setdefault(_CACHE_KEY, {})
        key = "/".join(parts)
        found = cache.get(key, _MISSING)
        if found is _MISSING:
            if not parts:
                found = Virtual(self.namespace.spaces_for(actor_of(environ)))
            else:
                # One query answers the path and all its prefixes (WsgiDAV asks for the
                # parent next).
                prefixes = self.namespace.resolve_prefixes(self.access(environ), parts)
                for depth, item in enumerate(prefixes, start=1):
                    cache.setdefault("/".join(parts[:depth]), item)
                found = prefixes[-1]
            cache[key] = found
        if found is None:
            return None
        if isinstance(found, Virtual):
            return VirtualCollection(path.rstrip("/") + "/", environ, found.names)
        if isinstance(found, Reached):
            return self.resource_for(path, environ, found.view, None, found.rights)
        return self.resource_factories[type(found)](self, path, environ, found)

    def resource_for(
        self,
        path: str,
        environ: dict[str, Any],
        view: NodeView,
        dead: dict[str, bytes] | None = None,
        rights: Perm = Perm.NONE,
        *,
        remember: bool = True,
    ) -> _NodeResource:
        """The resource of a node found at ``path``; with ``remember``, later lookups of
        ``path`` in this request need no query."""
        if remember:
            cache: dict[str, Any] = environ.setdefault(_CACHE_KEY, {})
            cache[_cache_key(path)] = Reached(view, rights)
        if view.is_folder:
            return FolderResource(path.rstrip("/") + "/", environ, view, dead, rights)
        return FileResource(path.rstrip("/"), environ, view, dead, rights=rights)

    def looked_up(self, path: str, environ: dict[str, Any]) -> Any:
        """What ``path`` was found to be earlier in this request (None when it was not looked
        up, or is missing): no query."""
        cache: dict[str, Any] = environ.get(_CACHE_KEY, {})
        return cache.get(_cache_key(path))

    def exists(self, path: str, environ: dict[str, Any]) -> bool:
        return self.get_resource_inst(path, environ) is not None

    def is_collection(self, path: str, environ: dict[str, Any]) -> bool:
        res = self.get_resource_inst(path, environ)
        return bool(res and res.is_collection)

    def substitute(self, environ: dict[str, Any], path: str, item: Any) -> None:
        """For the rest of this request, ``path`` is ``item`` (an item of an added space):
        ``GET <file>?version=N`` is answered by WsgiDAV's GET on the version's resource."""
        cache: dict[str, Any] = environ.setdefault(_CACHE_KEY, {})
        cache[_cache_key(path)] = item

    def forget(self, environ: dict[str, Any]) -> None:
        """Drop the request's node cache after a write."""
        environ.pop(_CACHE_KEY, None)

    def drop_locks(self, ref_url: str) -> None:
        """Locks do not follow a moved or deleted resource (RFC 4918, 7.7)."""
        storage = getattr(self.lock_manager, "storage", None)
        if isinstance(storage, SqlLockStorage):
            storage.drop(ref_url)  # not the locks on folders above a mount
        elif self.lock_manager is not None:
            self.lock_manager.remove_all_locks_from_url(ref_url, recursive=True)

    # -- the gate every request passes

    def custom_request_handler(
        self, environ: dict[str, Any], start_response: Any, default: Any
    ) -> Any:
        storage = getattr(self.lock_manager, "storage", None)
        if isinstance(storage, SqlLockStorage):
            storage.begin_request(RequestLockSpace(self, environ))
            set_write_fence(self.lock_manager.recheck)  # ended with the lock scope (davserver.app)
        _refuse_reading_queries(environ)
        check_request(self, environ)
        method = environ["REQUEST_METHOD"]
        if method == "UNLOCK":
            broken = self._break_lock(environ, start_response)
            if broken is not None:
                return broken
        if method not in ("PROPFIND", "GET", "HEAD"):
            return default(environ, start_response)
        res = self.get_resource_inst(environ["PATH_INFO"], environ)
        if res is None:
            return default(environ, start_response)  # WsgiDAV's own 404
        if method != "PROPFIND":
            if wants_variant(environ):
                if wants_version(environ):
                    res = version_entry(self, res, environ)
                return respond_variant(res, environ, start_response)
            if wants_version(environ):
                return respond_version(self, res, environ, start_response, default)
            folder_zip = self.folder_zip if isinstance(res, FolderResource) else None
            if zip_in_query(environ) and folder_zip is None:
                # Answering the listing (or the file) with 200 gave a client asking for a zip
                # something else.
                raise DAVError(HTTP_BAD_REQUEST, context_info=_NO_ZIP)
            if res.is_collection:
                if folder_zip is not None:
                    start_response = vary_on_accept(start_response)
                    if wants_zip(environ):
                        return folder_zip(res, environ, start_response, default)
                return folder_listing(res, environ, start_response)
            return default(environ, start_response)
        depth = environ.get("HTTP_DEPTH", "infinity").strip().lower()
        if depth == "infinity" and res.is_collection:
            raise DAVError(
                HTTP_FORBIDDEN,
                context_info="PROPFIND with Depth: infinity is not supported",
                err_condition=PRECONDITION_CODE_PropfindFiniteDepth,
            )
        return default(environ, start_response)  # providers.dispatch answers it

    def _break_lock(self, environ: dict[str, Any], start_response: Any) -> Any:
        """UNLOCK of another user's lock by whoever manages the item (``may_break_locks``),
        with its logbook row; None to leave the request to WsgiDAV (the holder's own UNLOCK,
        a token not on this item, anyone else: its 403)."""
        token = environ.get("HTTP_LOCK_TOKEN", "").strip().strip("<>")
        lock_man = self.lock_manager
        if not token or lock_man is None or util.get_content_length(environ) != 0:
            return None
        target = self.get_resource_inst(environ["PATH_INFO"], environ)
        holder = lock_man.get_lock(token, key="principal")
        actor = actor_of(environ)
        if (
            target is None
            or holder is None
            or holder == actor.username
            or not lock_man.is_url_locked_by_token(target.get_ref_url(), token)
            or not may_break_locks(self, environ, target)
        ):
            return None
        storage = lock_man.storage
        assert isinstance(storage, SqlLockStorage)  # davserver.app's: it writes the row
        storage.delete(token, details={"broken": True, "holder": holder})
        start_response("204 No Content", [("Content-Length", "0")])
        return [b""]


def _cache_key(path: str) -> str:
    """A path as the request's node cache keys it: its segments, without empty ones (split
    only when there are any: a listing keys every member)."""
    key = path.strip("/")
    return key if "//" not in key else "/".join(p for p in key.split("/") if p)


# The methods ``?version=N``, ``?thumbnail=``, ``?preview=`` and ``?zip`` mean something for
# (GET and HEAD), or change nothing with (OPTIONS).
_QUERIED = frozenset({"GET", "HEAD", "OPTIONS"})


def _refuse_reading_queries(environ: dict[str, Any]) -> None:
    """``?version=N``, ``?thumbnail=``, ``?preview=`` and ``?zip`` pick what a GET or HEAD
    sends. Any other method ignored them and acted on the item itself (``DELETE
    photo.jpg?thumbnail=256`` trashed the photo, a DELETE meant for version N the whole file):
    BadRequest instead."""
    if environ["REQUEST_METHOD"] in _QUERIED or not environ.get("QUERY_STRING"):
        return
    if wants_version(environ):
        with dav_errors():
            raise BadRequest(
                "?version=N is for GET and HEAD; to restore or copy a version, COPY its "
                f"entry in /{VERSIONS}/"
            )
    query = parse_qs(environ["QUERY_STRING"], keep_blank_values=True)
    if wants_variant(environ) or "zip" in query:
        with dav_errors():
            raise BadRequest(
                "?thumbnail, ?preview and ?zip are for GET and HEAD; "
                f"{environ['REQUEST_METHOD']} acts on the item itself, without them"
            )
