"""The rights each WebDAV method needs, checked before WsgiDAV runs the method.

Resources of spaces added to the namespace bring their own rules: a ``check_request(environ)``
method, raising a domain error, replaces the rules below for them.

The rights of every resource were computed by the namespace (davserver.services.namespace);
the rule for what an action needs is ``davserver.services.permissions.require``. Here each
method is mapped to its actions, on the target, on the parent it would create in, and for COPY
and MOVE on both ends. Something the user may not read answers exactly like something missing:
this lets WsgiDAV give its own 404 (or 409 for a missing parent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsgidav import util

from davserver.errors import Forbidden
from davserver.services.permissions import Perm, require
from providers.dispatch import destination_path
from providers.errors import dav_errors
from providers.resources import VirtualCollection, _NodeResource, actor_of
from providers.variants import wants_variant

if TYPE_CHECKING:
    from providers.provider import DavProvider

# Methods that change something: refused at once to read-only keys and viewers.
WRITE_METHODS = frozenset({"PUT", "MKCOL", "DELETE", "MOVE", "COPY", "PROPPATCH", "LOCK"})


def check_request(provider: DavProvider, environ: dict[str, Any]) -> None:
    """Raise DAVError 403 (or 404) when the user may not do what this request asks."""
    method = environ["REQUEST_METHOD"]
    with dav_errors():
        if method in WRITE_METHODS:
            actor_of(environ).require_write()  # before any body is read
        path = environ["PATH_INFO"]
        target = provider.get_resource_inst(path, environ)
        own_rules = getattr(target, "check_request", None)
        if own_rules is not None:
            own_rules(environ)  # resources of added spaces (trash, versions...) know their rules
        elif method == "GET" and isinstance(target, _NodeResource) and not target.is_collection:
            if not wants_variant(environ):  # a thumbnail or preview needs only READ
                require(target.rights, Perm.DOWNLOAD, "download")
        elif method in ("PUT", "MKCOL", "LOCK"):
            _may_create_or_change(provider, environ, path, target)
        elif method == "PROPPATCH":
            _may_change(target)
        elif method == "DELETE":
            if isinstance(target, VirtualCollection):
                raise Forbidden("this folder cannot be deleted")
            if isinstance(target, _NodeResource):
                require(target.rights, Perm.WRITE | Perm.TRASH, "delete")
        elif method in ("COPY", "MOVE") and isinstance(target, _NodeResource):
            if method == "MOVE":
                require(target.rights, Perm.WRITE, "move")
            else:
                require(target.rights, Perm.DOWNLOAD, "copy")
            check_destination(provider, environ)


def check_destination(provider: DavProvider, environ: dict[str, Any]) -> None:
    """COPY and MOVE: what their Destination needs (WRITE on an item they replace, WRITE on
    the folder they create in, or the rules of an added space's resource there)."""
    dest = destination_path(environ)
    if dest is not None:
        existing = provider.get_resource_inst(dest, environ)
        _may_create_or_change(provider, environ, dest, existing)


def _may_change(target: Any) -> None:
    if isinstance(target, VirtualCollection):
        raise Forbidden("this folder is read-only")
    if isinstance(target, _NodeResource):
        require(target.rights, Perm.WRITE, "change")


def _may_create_or_change(
    provider: DavProvider, environ: dict[str, Any], path: str, target: Any
) -> None:
    """Changing an existing item needs WRITE on it; creating one, WRITE on its folder.

    Resources of added spaces decide for themselves what may arrive in them (a COPY into a
    package, say): their ``check_incoming(environ)``.
    """
    if target is not None:
        incoming = getattr(target, "check_incoming", None)
        if incoming is not None:
            incoming(environ)
            return
        _may_change(target)
        return
    parent = provider.get_resource_inst(util.get_uri_parent(path.rstrip("/")), environ)
    incoming = getattr(parent, "check_incoming", None)
    if incoming is not None:
        incoming(environ)
    elif isinstance(parent, VirtualCollection):
        raise Forbidden("nothing can be created here")
    if isinstance(parent, _NodeResource):
        require(parent.rights, Perm.WRITE, "create items in")
