"""Where a URL's locks are kept, for one request: its ``LockKey`` (see providers.lock_storage).

A URL names an item of some space: the requester's own (``/files/...``), a group's
(``/groups/<group>/...``), or, through a mount, someone else's: ``/users/<name>/...`` for
admins and moderators, ``/shared/<owner>/<entry>/...`` for what was shared with the requester.
Locks live in the namespace of the item's space, under the URL its owner (or a group member)
uses, so a lock taken through any of these URLs holds through all the others. Other URLs
(virtual folders, trash, versions, packages) stay in the requester's own namespace.

A name is found whichever Unicode form spells it (``tree.name_key``: macOS sends decomposed
names, Windows and Linux composed ones), so roots are kept with every name composed (NFC), and
handed back to the requester as it spelled the URL.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from sqlalchemy.orm import Session
from wsgidav.lock_man.lock_manager import normalize_lock_root

from davserver.models import Op
from davserver.services.audit import record_audit
from davserver.services.lock_rows import group_namespace, user_namespace
from davserver.services.namespace import Reached
from davserver.services.permissions import Perm
from davserver.services.tree import NodeView, name_key
from providers.dispatch import destination_path
from providers.lock_storage import LockKey, LockLogger
from providers.resources import actor_of

if TYPE_CHECKING:
    from providers.provider import DavProvider

# How many names make the mount of a space reached through another user's URLs.
_MOUNT_DEPTH = {"users": 2, "shared": 3}


class RequestLockSpace:
    """``LockSpace`` for one request, resolving mounts through the provider (once each)."""

    def __init__(self, provider: DavProvider, environ: dict[str, Any]) -> None:
        self._provider = provider
        self._environ = environ
        self._own = user_namespace(actor_of(environ).user_id)
        self._mounts: dict[str, LockKey | None] = {}

    def key(self, url: str) -> LockKey:
        key = self._key(url)
        return key if _composed(url) == url else replace(key, spelled=url)

    def _key(self, url: str) -> LockKey:
        parts = [p for p in url.split("/") if p]  # quoted names, as in WsgiDAV's ref URLs
        if len(parts) > 1 and parts[0] == "groups":
            return LockKey(group_namespace(unquote(parts[1])), _composed(url))
        depth = _mount_depth(parts)
        if depth:
            mount = self._mount("/" + "/".join(parts[:depth]))
            if mount is not None:
                rest = _composed("/".join(parts[depth:]))
                return replace(mount, root=normalize_lock_root(f"{mount.mount_root}/{rest}"))
        return LockKey(self._own, _composed(url))

    def namespace(self, url: str) -> str:
        """``key(url).namespace`` without a query, even at a mount: a PROPFIND of /shared/<owner>/
        asks it for every member."""
        parts = [p for p in url.split("/") if p]
        if len(parts) > 1 and parts[0] == "groups":
            return group_namespace(unquote(parts[1]))
        depth = _mount_depth(parts)
        if depth:
            owner = unquote(parts[1])
            if parts[0] == "shared" and owner.startswith("@"):
                return group_namespace(owner[1:])  # what a group shares is listed as @group
            view = self._view("/" + "/".join(parts[:depth]))
            if view is not None:
                return user_namespace(view.owner_id)
        return self._own

    def request_keys(self) -> list[LockKey]:
        keys = [LockKey(self._own, "/")]
        for path in (self._environ.get("PATH_INFO"), destination_path(self._environ)):
            if path:
                keys.append(self.key(normalize_lock_root(quote(path))))
        return keys

    def lock_logger(self) -> LockLogger:
        """Rows about the item the request names (LOCK, its refresh and UNLOCK name the
        locked item or one below a depth-infinity lock), by the requester."""
        environ = self._environ
        res = self._provider.get_resource_inst(environ["PATH_INFO"], environ)
        view = getattr(res, "view", None)
        node_id = view.id if isinstance(view, NodeView) else None
        actor = actor_of(environ)

        def log(session: Session, op: Op, details: dict[str, Any]) -> None:
            record_audit(session, actor, op, node_id=node_id, details=details)

        return log

    def writable(self, url: str) -> bool | None:
        parts = [p for p in unquote(url).split("/") if p]
        if not parts:
            return True
        provider = self._provider
        found = provider.namespace.resolve_prefixes(provider.access(self._environ), parts)[-1]
        if not isinstance(found, Reached):
            return None if found is None else True  # a virtual folder: nothing to write
        node_id = found.view.id
        rights = provider.namespace.rights_now(actor_of(self._environ).user_id, [node_id])
        return rights is not None and bool(rights[node_id] & Perm.WRITE)  # None: disabled

    def _mount(self, url: str) -> LockKey | None:
        if url not in self._mounts:
            self._mounts[url] = self._resolve_mount(url)
        return self._mounts[url]

    def _view(self, mount_url: str) -> NodeView | None:
        """The item at a mount; None when there is none this requester may see."""
        res = self._provider.get_resource_inst(unquote(mount_url), self._environ)
        view = getattr(res, "view", None)
        return view if isinstance(view, NodeView) else None

    def _resolve_mount(self, url: str) -> LockKey | None:
        view = self._view(url)
        if view is None:
            return None
        group: str | None = None
        names: list[str] = []  # a user's own space at its root (/users/<name>) needs no query
        if view.parent_id is not None or view.group_id is not None:
            group, names = self._provider.namespace.space_path(view.id)
        if group is None:
            namespace, base = user_namespace(view.owner_id), "/files"
        else:
            namespace, base = group_namespace(group), f"/groups/{group}"
        root = normalize_lock_root(_composed(quote("/".join([base, *names]))))
        return LockKey(namespace, root, mount_url=url, mount_root=root)


def _composed(url: str) -> str:
    """A quoted URL path with its names in NFC (``tree.name_key``), quoted the same way."""
    if "%" not in url:  # nothing but ASCII: already composed
        return url
    names = unquote(url)
    composed = name_key(names)
    return url if composed == names else quote(composed)


def _mount_depth(parts: list[str]) -> int:
    """How many of a URL's names (quoted) make the mount it passes through; 0 for none."""
    depth = _MOUNT_DEPTH.get(parts[0], 0) if parts else 0
    return depth if len(parts) >= depth else 0
