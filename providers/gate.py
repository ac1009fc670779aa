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
from davserver.services.permissions import Perm, SpaceOwner, base_permissions, require
from providers.dispatch import destination_path
from providers.errors import dav_errors
from providers.resources import VirtualCollection, _NodeResource, actor_of
from providers.variants import wants_variant

if TYPE_CHECKING:
    from providers.provider import DavProvider

# Methods that change something: refused at once to read-only keys and viewers. UNLOCK
# too: neither can take a lock, and a read-only key removed its user's (it speaks for the
# same principal), which let other writers past the user's editor.
WRITE_METHODS = frozenset({"PUT", "MKCOL", "DELETE", "MOVE", "COPY", "PROPPATCH", "LOCK", "UNLOCK"})


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
                _may_move_bytes_there(provider, environ, target)
            else:
                require(target.rights, Perm.DOWNLOAD, "copy")
            check_destination(provider, environ)


def may_break_locks(provider: DavProvider, environ: dict[str, Any], target: Any) -> bool:
    """Whether the user may UNLOCK someone else's lock on ``target``: whoever manages the
    item (its owner, in a group's space the group's admins, admins), as they manage its
    sharing; never through a read-only key or as a viewer.

    Otherwise a lock outlives the reach of its holder: a grantee whose grant was revoked, or
    whose editor crashed, left the owner unable to write their own file until it expired.
    """
    if not isinstance(target, _NodeResource) or target.view is None:
        return False
    actor = actor_of(environ)
    if not actor.may_write:
        return False
    view = target.view
    space = SpaceOwner(view.owner_id, view.group_id)
    return bool(base_permissions(provider.access(environ).principal, space) & Perm.SHARE)


def check_destination(provider: DavProvider, environ: dict[str, Any]) -> None:
    """COPY and MOVE: what their Destination needs (WRITE on an item they replace, WRITE on
    the folder they create in, or the rules of an added space's resource there)."""
    dest = destination_path(environ)
    if dest is not None:
        existing = provider.get_resource_inst(dest, environ)
        _may_create_or_change(provider, environ, dest, existing)


def _may_move_bytes_there(provider: DavProvider, environ: dict[str, Any], target: Any) -> None:
    """A MOVE that puts an item's bytes within someone's reach needs DOWNLOAD on it, as a
    COPY does: into another space (a copy there, out of reach of the grants it had), under
    a folder where the mover may download (its grants then cover the item: a grantee who may
    write but not download took a file so, in two MOVEs, to their own space), onto a file
    the mover may download (the bytes become that file's newest version), or where grants
    reach someone those where it is do not (a grantee who may write two folders, but
    download in neither, moved a file into the one also shared with a friend, who then
    downloaded it: ``NamespaceService.widens_reach``)."""
    if target.rights & Perm.DOWNLOAD or target.view is None:
        return
    dest = destination_path(environ)
    if dest is None:
        return
    refused = Forbidden("moving this item there needs the download right on it")
    existing = provider.get_resource_inst(dest, environ)
    if isinstance(existing, _NodeResource) and existing.rights & Perm.DOWNLOAD:
        raise refused
    parent = provider.get_resource_inst(_parent_of(dest), environ)
    if not isinstance(parent, _NodeResource) or parent.view is None:
        return
    view, here = parent.view, target.view
    elsewhere = (view.owner_id, view.group_id) != (here.owner_id, here.group_id)
    if elsewhere or parent.rights & Perm.DOWNLOAD:
        raise refused
    there = view.id
    if isinstance(existing, _NodeResource) and existing.view and not existing.is_collection:
        there = existing.view.id  # a file overwritten stays, with grants of its own
    if here.parent_id is not None and provider.namespace.widens_reach(
        here.parent_id, there, provider.access(environ).now
    ):
        raise Forbidden(
            "moving this item there would let others reach it whom its grants here do not;"
            " that needs the download right on it"
        )


def _parent_of(path: str) -> str:
    return str(util.get_uri_parent(path.rstrip("/")))


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
