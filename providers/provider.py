"""The WsgiDAV provider: maps URL paths to resources for the authenticated user.

``/`` is a read-only listing of the spaces; ``/files/...`` is the user's own space. Nodes read
during a request are cached in the request's environ (WsgiDAV looks the same path up several
times per request); every write clears that cache.
"""

from __future__ import annotations

from typing import Any

from wsgidav.dav_error import (
    HTTP_FORBIDDEN,
    DAVError,
    PRECONDITION_CODE_PropfindFiniteDepth,
)
from wsgidav.dav_provider import DAVProvider

from davserver.services.files import FileService
from davserver.services.tree import NodeView
from providers import propfind
from providers.listing import folder_listing
from providers.lock_storage import SqlLockStorage
from providers.resources import (
    FileResource,
    FolderResource,
    RootCollection,
    _NodeResource,
    actor_of,
)

_CACHE_KEY = "davserver.nodes"
_MISSING = object()


class DavProvider(DAVProvider):
    def __init__(self, files: FileService) -> None:
        super().__init__()
        self.files = files

    def is_readonly(self) -> bool:
        return False

    # -- lookups

    def get_resource_inst(self, path: str, environ: dict[str, Any]) -> Any:
        parts = [p for p in path.split("/") if p]
        if not parts:
            return RootCollection("/", environ)
        if parts[0] not in RootCollection.SPACES:
            return None
        cache: dict[str, Any] = environ.setdefault(_CACHE_KEY, {})
        key = "/".join(parts)
        view = cache.get(key, _MISSING)
        if view is _MISSING:
            home = self.files.home_id(actor_of(environ).user_id)
            if len(parts) == 1:
                view = self.files.resolve(home, [])
            else:
                # One query answers the path and all its prefixes (WsgiDAV asks for the
                # parent next).
                chain = self.files.resolve_chain(home, parts[1:])
                for depth, found in enumerate(chain[:-1], start=2):
                    if found is not None:
                        cache["/".join(parts[:depth])] = found
                view = chain[-1]
            cache[key] = view
        if view is None:
            return None
        return self.resource_for(path, environ, view)

    def resource_for(
        self,
        path: str,
        environ: dict[str, Any],
        view: NodeView,
        dead: dict[str, bytes] | None = None,
    ) -> _NodeResource:
        cache: dict[str, Any] = environ.setdefault(_CACHE_KEY, {})
        cache["/".join(p for p in path.split("/") if p)] = view
        if view.is_folder:
            return FolderResource(path.rstrip("/") + "/", environ, view, dead)
        return FileResource(path.rstrip("/"), environ, view, dead)

    def exists(self, path: str, environ: dict[str, Any]) -> bool:
        return self.get_resource_inst(path, environ) is not None

    def is_collection(self, path: str, environ: dict[str, Any]) -> bool:
        res = self.get_resource_inst(path, environ)
        return bool(res and res.is_collection)

    def forget(self, environ: dict[str, Any]) -> None:
        """Drop the request's node cache after a write."""
        environ.pop(_CACHE_KEY, None)

    def drop_locks(self, ref_url: str) -> None:
        """Locks do not follow a moved or deleted resource (RFC 4918, 7.7)."""
        if self.lock_manager is not None:
            self.lock_manager.remove_all_locks_from_url(ref_url, recursive=True)

    # -- the gate every request passes

    def custom_request_handler(
        self, environ: dict[str, Any], start_response: Any, default: Any
    ) -> Any:
        storage = getattr(self.lock_manager, "storage", None)
        if isinstance(storage, SqlLockStorage):
            storage.begin_request(actor_of(environ).user_id.hex)
        method = environ["REQUEST_METHOD"]
        if method not in ("PROPFIND", "GET", "HEAD"):
            return default(environ, start_response)
        res = self.get_resource_inst(environ["PATH_INFO"], environ)
        if res is None:
            return default(environ, start_response)  # WsgiDAV's own 404
        if method != "PROPFIND":
            if res.is_collection:
                return folder_listing(res, environ, start_response)
            return default(environ, start_response)
        depth = environ.get("HTTP_DEPTH", "infinity").strip().lower()
        if depth == "infinity" and res.is_collection:
            raise DAVError(
                HTTP_FORBIDDEN,
                context_info="PROPFIND with Depth: infinity is not supported",
                err_condition=PRECONDITION_CODE_PropfindFiniteDepth,
            )
        if propfind.can_handle(environ):
            return propfind.respond(res, environ, start_response)
        return default(environ, start_response)
