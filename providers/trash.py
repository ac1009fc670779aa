"""``/trash/``: the user's deleted items. MOVE out restores, DELETE purges, the rest is read-only.

Each item carries Nextcloud's trash properties (``nc:trashbin-filename``,
``nc:trashbin-original-location``, ``nc:trashbin-delete-timestamp``) and ours
(``ds:original-path``, ``ds:deleted-at``, ``ds:deleted-by``). Listing ``/trash/`` first purges
the user's items that are past the retention period.

A restore never replaces anything: MOVE to a name that is taken, or into a folder that does not
exist (or is in the trash itself), answers 409 saying so, whatever the Overwrite header says.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from wsgidav import util
from wsgidav.dav_provider import DAVCollection, DAVNonCollection

from davserver.errors import Conflict, Forbidden
from davserver.services.permissions import Perm, SpaceOwner, base_permissions, require, restrict
from davserver.services.trash import TrashedNode, TrashEntry, TrashRoot, TrashService
from davserver.services.tree import NodeView
from providers.computed import DS, NC, ComputedProperties, StoredBytes, prop
from providers.dispatch import destination_path
from providers.error_printer import logs_unexpected
from providers.errors import dav_errors
from providers.gate import check_destination
from providers.resources import (
    EMPTY_SHA256,
    READING,
    FolderResource,
    actor_of,
    guess_mime_type,
    logged_content,
)
from providers.variants import wants_variant

if TYPE_CHECKING:
    from providers.provider import DavProvider

FILENAME = f"{NC}trashbin-filename"
ORIGINAL_LOCATION = f"{NC}trashbin-original-location"
DELETE_TIMESTAMP = f"{NC}trashbin-delete-timestamp"
ORIGINAL_PATH = f"{DS}original-path"
DELETED_AT = f"{DS}deleted-at"
DELETED_BY = f"{DS}deleted-by"
_READ_ONLY = "the trash is read-only: MOVE an item out to restore it, DELETE it to purge it"


def register(provider: DavProvider, service: TrashService) -> None:
    """Give the items of the ``/trash/`` space their resources, and route DELETE of a live
    item through the trash service (``TrashService.delete``)."""
    provider.delete_item = lambda actor, node_id, seen: service.delete(actor, node_id, seen=seen)
    factories = provider.resource_factories
    factories[TrashRoot] = lambda p, path, environ, item: TrashRootResource(path, environ, service)
    factories[TrashEntry] = lambda p, path, environ, item: trashed(
        path, environ, item.view, item, service
    )
    factories[TrashedNode] = lambda p, path, environ, item: trashed(
        path, environ, item.view, item.entry, service
    )


def trashed(
    path: str, environ: dict[str, Any], view: NodeView, entry: TrashEntry, service: TrashService
) -> TrashedFolder | TrashedFile:
    if view.is_folder:
        return TrashedFolder(path.rstrip("/") + "/", environ, view, entry, service)
    return TrashedFile(path.rstrip("/"), environ, view, entry, service)


class TrashRootResource(ComputedProperties, DAVCollection):
    read_only_reason = _READ_ONLY

    def __init__(self, path: str, environ: dict[str, Any], service: TrashService) -> None:
        DAVCollection.__init__(self, path.rstrip("/") + "/", environ)
        self.service = service
        self._entries_now: tuple[TrashEntry, ...] | None = None

    def accepted_methods(self) -> frozenset[str]:
        return READING

    def check_request(self, environ: dict[str, Any]) -> None:
        if environ["REQUEST_METHOD"] not in READING:
            raise Forbidden(self.read_only_reason)

    def _entries(self) -> tuple[TrashEntry, ...]:
        """The entries, once the expired ones are purged (a listing is when that happens)."""
        if self._entries_now is None:
            ctx, namespace = self.provider.access(self.environ), self.provider.namespace
            listing = self.service.listing_for(namespace, ctx)
            expired = self.service.expired(listing)
            if expired:
                self.service.purge_items([e.view.id for e in expired], reason="expired")
                self.provider.forget(self.environ)
                listing = self.service.listing_for(namespace, ctx)
            self._entries_now = listing.entries
        return self._entries_now

    def get_member_names(self) -> list[str]:
        return [entry.name for entry in self._entries()]

    def get_member_list(self) -> list[Any]:
        return list(self.iter_members())

    def iter_members(self) -> Iterator[TrashedFolder | TrashedFile]:
        """``get_member_list`` one member at a time, for a caller done with each before it
        takes the next (PROPFIND, ``members_of``): 50,000 items were all made as resources
        before the first was written."""
        for entry in self._entries():
            yield trashed(self.path + entry.name, self.environ, entry.view, entry, self.service)

    def get_display_name(self) -> str:
        return "trash"


class _Trashed(ComputedProperties):
    """An item in the trash (``view`` is ``entry``'s node) or a node inside one."""

    read_only_reason = _READ_ONLY
    provider: DavProvider
    environ: dict[str, Any]
    path: str

    def _init_trashed(self, view: NodeView, entry: TrashEntry, service: TrashService) -> None:
        self.view = view
        self.entry = entry
        self.service = service

    @property
    def rights(self) -> Perm:
        """Read-only: what the user may do with the item where it was (thumbnails,
        oc:permissions), short of changing it."""
        return self._space_rights() & (Perm.READ | Perm.DOWNLOAD)

    def _space_rights(self) -> Perm:
        """What the user's roles and memberships give in the item's space. A moderator who
        trashed a group's file (moderators may read and trash anything) finds it in their
        trash, but may not download it there either, nor purge it: that needs the write
        right in its space (its owner, the group's members, admins)."""
        principal = self.provider.access(self.environ).principal
        space = SpaceOwner(self.view.owner_id, self.view.group_id)
        return restrict(principal, base_permissions(principal, space))

    @property
    def is_entry(self) -> bool:
        return self.view.id == self.entry.view.id

    def accepted_methods(self) -> frozenset[str]:
        """MOVE out restores; DELETE purges a whole item of the trash, not what is in it."""
        return READING | ({"MOVE", "DELETE"} if self.is_entry else {"MOVE"})

    def check_request(self, environ: dict[str, Any]) -> None:
        method = environ["REQUEST_METHOD"]
        if method == "GET" and not self.view.is_folder and not wants_variant(environ):
            require(self.rights, Perm.DOWNLOAD, "download")
        if method in READING:
            return
        if method == "DELETE" and self.is_entry:
            require(self._space_rights(), Perm.WRITE, "purge")
            return
        if method == "MOVE":
            self._check_restore(environ)
            return
        if method == "DELETE":
            raise Forbidden("only a whole item of the trash can be purged")
        raise Forbidden(self.read_only_reason)

    def _check_restore(self, environ: dict[str, Any]) -> None:
        """A restore needs a free name in an existing folder the user may write to."""
        dest = destination_path(environ)
        if dest is None:
            return  # WsgiDAV answers 400
        dest = dest.rstrip("/")
        provider = self.provider
        if provider.get_resource_inst(dest, environ) is not None:
            raise Conflict(f"cannot restore to {dest}: that name is taken; choose another")
        folder = util.get_uri_parent(dest).rstrip("/") or "/"
        if provider.get_resource_inst(folder, environ) is None:
            raise Conflict(
                f"cannot restore to {dest}: there is no folder {folder} "
                "(if it is in the trash, restore it first)"
            )
        check_destination(provider, environ)

    @logs_unexpected
    def handle_move(self, dest_path: str) -> bool:
        provider, environ = self.provider, self.environ
        dest = dest_path.rstrip("/")
        folder = provider.get_resource_inst(util.get_uri_parent(dest), environ)
        with dav_errors():
            if not isinstance(folder, FolderResource) or folder.view is None:
                raise Forbidden("items can only be restored into a folder of a space")
            self.service.restore(
                actor_of(environ), self.view.id, folder.view, util.get_uri_name(dest), where=dest
            )
        provider.forget(environ)
        environ["davserver.status"] = 201
        return True

    @logs_unexpected
    def handle_delete(self) -> bool:
        with dav_errors():
            if not self.is_entry:
                raise Forbidden("only a whole item of the trash can be purged")
            self.service.purge(actor_of(self.environ), self.view.id)
        self.provider.forget(self.environ)
        return True

    @logs_unexpected
    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        with dav_errors():
            raise Forbidden(_READ_ONLY)

    def computed_properties(self) -> dict[str, str]:
        if not self.is_entry:
            return {}
        entry = self.entry
        return {
            FILENAME: prop(FILENAME, entry.view.name),
            ORIGINAL_LOCATION: prop(ORIGINAL_LOCATION, entry.original_path.lstrip("/")),
            DELETE_TIMESTAMP: prop(DELETE_TIMESTAMP, int(entry.deleted_at.timestamp())),
            ORIGINAL_PATH: prop(ORIGINAL_PATH, entry.original_path),
            DELETED_AT: prop(DELETED_AT, util.get_rfc3339_time(entry.deleted_at.timestamp())),
            **({DELETED_BY: prop(DELETED_BY, entry.deleted_by)} if entry.deleted_by else {}),
        }

    def get_creation_date(self) -> float:
        return self.view.created_at.timestamp()

    def get_last_modified(self) -> float:
        return self.view.last_modified.timestamp()

    def get_display_name(self) -> str:
        return util.get_uri_name(self.path.rstrip("/"))


class TrashedFolder(_Trashed, DAVCollection):
    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        view: NodeView,
        entry: TrashEntry,
        service: TrashService,
    ) -> None:
        DAVCollection.__init__(self, path, environ)
        self._init_trashed(view, entry, service)

    def get_member_names(self) -> list[str]:
        return [child.name for child in self.service.children(self.view)]

    def get_member_list(self) -> list[Any]:
        return list(self.iter_members())

    def iter_members(self) -> Iterator[TrashedFolder | TrashedFile]:
        """``get_member_list`` one member at a time (see ``TrashRootResource``)."""
        for child in self.service.children(self.view):
            yield trashed(self.path + child.name, self.environ, child, self.entry, self.service)

    def support_recursive_delete(self) -> bool:
        return True


class TrashedFile(StoredBytes, _Trashed, DAVNonCollection):
    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        view: NodeView,
        entry: TrashEntry,
        service: TrashService,
    ) -> None:
        DAVNonCollection.__init__(self, path, environ)
        self._init_trashed(view, entry, service)

    def get_content_length(self) -> int:
        return self.view.size

    def get_content_type(self) -> str:
        return self.view.mime_type or guess_mime_type(self.view.name)

    def get_etag(self) -> str:
        return self.view.sha256 or EMPTY_SHA256

    def get_content(self) -> BinaryIO:
        """Only GET reads the bytes (HEAD does not): this is where a download is logged."""
        return logged_content(self.service.files, self, self.view)
