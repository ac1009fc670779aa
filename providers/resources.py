"""WebDAV resources over the file service: the virtual root, folders and files.

Resources translate between WsgiDAV's calls and service calls; they hold no rules of their own.
Each keeps the ``NodeView`` it was built from, so a PROPFIND of a folder costs one query for the
members (plus one for their dead properties), not one per member.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import quote

from lxml import etree
from wsgidav import util
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_FAILED_DEPENDENCY,
    HTTP_FORBIDDEN,
    DAVError,
    PRECONDITION_CODE_ProtectedProperty,
)
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, _DAVResource

from davserver.blobstore import BlobWriter
from davserver.errors import AlreadyExists, BadRequest, QuotaExceeded
from davserver.services.actor import ENVIRON_KEY, Actor
from davserver.services.bounds import from_epoch
from davserver.services.dead_props import PlannedProperties, check_property_name
from davserver.services.files import FileService, moves_in_as_version
from davserver.services.namespace import Reached
from davserver.services.permissions import Perm
from davserver.services.tree import NodeView
from providers import live_props
from providers.conditions import parse_http_date, served_range
from providers.digests import expected_digests, repr_digest
from providers.error_printer import logs_unexpected
from providers.errors import MKCOL_STATUS, dav_errors
from providers.lock_storage import SqlLockStorage, check_owner
from providers.xml_safety import BODY_KEY, stored_elements

if TYPE_CHECKING:
    from providers.provider import DavProvider

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# Properties WsgiDAV treats as live but clients set (rclone, Windows): mapped to the mtime.
_MTIME_PROPS = frozenset(
    {
        "{DAV:}getlastmodified",
        "{DAV:}lastmodified",
        "{urn:schemas-microsoft-com:}Win32LastModifiedTime",
    }
)
_LOCK_PROPS = frozenset({"{DAV:}lockdiscovery", "{DAV:}supportedlock"})
# Content-Types of a PUT that say nothing about the file, which is then typed by its name:
# no type, and curl's label for every -d/--data-binary body (a form's).
_UNTYPED = frozenset({"", "application/octet-stream", "application/x-www-form-urlencoded"})
# An upload whose body took longer than this (seconds) is checked again, when it is recorded,
# against the uploader's rights and the owner's quota then (``FileResource._may_still_write``);
# a shorter one is judged by those it began with, as any request is: one statement apart from
# a revoke, it could have come first. Every small upload paid four statements more for it.
_RECHECK_AFTER = 1.0
# The seconds of a request's X-OC-Mtime, once checked (``dispatch.check_mtime_header``).
MTIME_KEY = "davserver.oc_mtime"
# Whether a PUT created its file (True) or added a version (False): WsgiDAV answers 201 or 204
# by whether the file was there when the request began, and another PUT may have made it since.
CREATED_KEY = "davserver.put_created"
# Set when a LOCK of an unmapped URL found the name taken meanwhile and locked what is there:
# WsgiDAV answers 201 for such a LOCK, and providers.dispatch turns it into 200.
FOUND_KEY = "davserver.lock_found_existing"


@functools.lru_cache(maxsize=1024)
def _mime_of_suffixes(suffixes: str) -> str:
    return str(util.guess_mime_type("x" + suffixes))


def _href(self: _DAVResource) -> str:
    """WsgiDAV's ``get_href``, with ``|`` escaped: it is not allowed in a URI (RFC 3986 2),
    and Java's URI parser refuses an href that holds it (Sardine). The rest WsgiDAV leaves
    unescaped stays so (Nautilus chokes on ``%28``)."""
    provider = self.provider
    path = provider.mount_path + provider.share_path + self.get_preferred_path()
    return quote(path, "/!*'(),$-_.")


_DAVResource.get_href = _href  # every resource's, whatever space it is in


def guess_mime_type(name: str) -> str:
    """WsgiDAV's guess from a file name, remembered by the name's last two suffixes, which
    decide it (``.tar.gz``): a listing asks once per member."""
    parts = name.rsplit("/", 1)[-1].split(".")
    return _mime_of_suffixes("".join("." + p for p in parts[1:][-2:]))


def actor_of(environ: dict[str, Any]) -> Actor:
    actor = environ.get(ENVIRON_KEY)
    if actor is None:
        raise DAVError(401)
    return actor


def logged_content(files: FileService, res: Any, view: NodeView) -> BinaryIO:
    """The bytes of file ``view`` (current version), which resource ``res`` answers a GET
    with, and their download in the logbook (with the range sent, if any)."""
    with dav_errors():
        content = files.open_content(view)
        files.record_download(
            actor_of(res.environ),
            view.id,
            view.current_version_id,
            size=view.size,
            served_range=served_range(res.environ, res.get_etag(), res.get_last_modified()),
        )
    return content


def _epoch(value: dt.datetime) -> float:
    return value.timestamp()


def parse_client_time(value: Any) -> dt.datetime:
    """A client's timestamp: epoch seconds (X-OC-Mtime, rclone) or an HTTP date string.
    BadRequest when it is neither, or outside the years 1 to 9999."""
    if isinstance(value, int | float):
        return from_epoch(float(value))
    text = str(value or "").strip()
    seconds: float | None
    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_http_date(text)
    if seconds is None:
        raise BadRequest(f"unreadable time {text!r}")
    return from_epoch(seconds)


class _NodeResource:
    """What folders and files share: identity, times, dead properties, mtime."""

    provider: DavProvider
    environ: dict[str, Any]
    path: str
    is_collection: bool
    view: NodeView | None
    rights: Perm
    _dead: dict[str, bytes] | None

    def _init_node(
        self, view: NodeView | None, dead: dict[str, bytes] | None, rights: Perm
    ) -> None:
        self.view = view
        self._dead = None if dead is None else stored_elements(dead)
        self._dead_planned: PlannedProperties | None = None  # a PROPPATCH's, tried (dry run)
        self._mtime_planned: dt.datetime | None = None  # and the client's time it sets
        self._dead_failed: DAVError | None = None  # setting them failed
        self.rights = rights

    @property
    def node_id(self) -> uuid.UUID:
        if self.view is None:
            raise DAVError(404)
        return self.view.id

    def get_creation_date(self) -> float | None:
        return _epoch(self.view.created_at) if self.view else None

    def get_last_modified(self) -> float | None:
        return _epoch(self.view.last_modified) if self.view else time.time()

    def get_last_changed(self) -> float | None:
        """When the server last changed the item, which can be later than its Last-Modified:
        that is the client's time (X-OC-Mtime), and a new version may set it back
        (``conditions``)."""
        return _epoch(self.view.modified_at) if self.view else None

    def get_display_name(self) -> str:
        if self.view is not None and self.view.name:
            return self.view.name
        return util.get_uri_name(self.path.rstrip("/"))

    def dead_properties(self) -> dict[str, bytes]:
        """{name: serialized element}, each one safe to copy into a multistatus as it is."""
        if self._dead is None:
            self._dead = (
                stored_elements(self.provider.files.dead_properties([self.view.id])[self.view.id])
                if self.view
                else {}
            )
        return self._dead

    def get_property_names(self, *, is_allprop: bool) -> list[str]:
        names: list[str] = _DAVResource.get_property_names(self, is_allprop=is_allprop)
        names.extend(n for n in self.dead_properties() if n not in names)
        return names

    def get_property_value(self, name: str) -> Any:
        if name == "{DAV:}getetag":
            etag = self.get_etag()  # type: ignore[attr-defined]
            if etag is None:
                raise DAVError(404)
            return f'"{etag}"'
        dead = self.dead_properties().get(name)
        if dead is not None:
            return etree.fromstring(dead)
        if name in live_props.READABLE:
            text = live_props.render(self, name)
            if text is None:
                raise DAVError(404)
            return etree.fromstring(text)
        return _DAVResource.get_property_value(self, name)

    @logs_unexpected
    def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> Any:
        if name in _LOCK_PROPS:
            raise DAVError(HTTP_FORBIDDEN, err_condition=PRECONDITION_CODE_ProtectedProperty)
        if name in _MTIME_PROPS and value is not None:
            try:
                mtime = parse_client_time(value.text)
            except BadRequest as exc:
                # RFC 4918 9.2: 409 for a value not appropriate to the property.
                raise DAVError(HTTP_CONFLICT, context_info=str(exc)) from None
            if dry_run:
                self._mtime_planned = mtime
                return None
            return self._set_planned()
        if name == live_props.CHECKSUMS:
            # rclone sends its checksums along with a new mtime; ours are computed from the
            # bytes, so the client's are accepted and not stored.
            return None
        if name.startswith("{DAV:}") or name in live_props.NAMES:
            raise DAVError(HTTP_FORBIDDEN, err_condition=PRECONDITION_CODE_ProtectedProperty)
        # UTF-8: lxml's default (ASCII) writes other letters as character references, which
        # XML allows in text but not in names, so ``<X:été>`` would spoil every listing.
        stored = None if value is None else etree.tostring(value, encoding="utf-8")
        if dry_run:
            # WsgiDAV tries every property of a PROPPATCH first, then sets each: a refused
            # name, or a request that does not fit, sets none of it (RFC 4918 9.2).
            with dav_errors():
                check_property_name(name)
                if self._dead_planned is None:
                    self._dead_planned = PlannedProperties(self.dead_properties())
                self._dead_planned.plan(name, stored)
            return None
        return self._set_planned()

    def _set_planned(self) -> None:
        """What the PROPPATCH's dry run planned, all of it at its first property (RFC 4918
        9.2: all or none), in one transaction: the dead properties and the client's time
        (Windows sets Win32LastModifiedTime beside its own properties). The other properties
        then have nothing left to do, or fail with it (424)."""
        planned = self._dead_planned.changes if self._dead_planned is not None else {}
        mtime = self._mtime_planned
        self._dead_planned, self._mtime_planned = None, None
        if not planned and mtime is None:
            if self._dead_failed is not None:
                raise DAVError(HTTP_FAILED_DEPENDENCY, context_info="another property failed")
            return None
        try:
            with dav_errors():
                self.provider.files.set_dead_properties(
                    actor_of(self.environ), self.node_id, planned, mtime=mtime
                )
        except DAVError as exc:
            self._dead_failed = exc
            raise
        if mtime is not None:
            self.provider.forget(self.environ)
        if self._dead is not None:
            for changed, value in planned.items():
                if value is None:
                    self._dead.pop(changed, None)
                else:
                    self._dead[changed] = value
        return None

    def remove_all_properties(self, *, recursive: bool) -> None:
        """Dead properties belong to the node; they go when the node goes."""

    def set_last_modified(self, dest_path: str, time_stamp: Any, *, dry_run: bool) -> bool:
        with dav_errors():
            mtime = (
                time_stamp if isinstance(time_stamp, dt.datetime) else parse_client_time(time_stamp)
            )
        if dry_run:
            return True
        with dav_errors():
            self.provider.files.set_mtime(actor_of(self.environ), self.node_id, mtime)
        self.provider.forget(self.environ)
        return True

    def _split_destination(
        self, dest_path: str
    ) -> tuple[FolderResource, str, _NodeResource | None]:
        parent = self.provider.get_resource_inst(util.get_uri_parent(dest_path), self.environ)
        if not isinstance(parent, FolderResource) or parent.view is None:
            raise DAVError(HTTP_FORBIDDEN, context_info="cannot copy or move there")
        existing = self.provider.get_resource_inst(dest_path, self.environ)
        if existing is not None and not isinstance(existing, _NodeResource):
            raise DAVError(HTTP_FORBIDDEN)
        return parent, util.get_uri_name(dest_path.rstrip("/")), existing

    def delete(self) -> None:
        self.handle_delete()

    @logs_unexpected
    def handle_delete(self) -> bool:
        lock_manager = self.provider.lock_manager
        if lock_manager is not None:
            lock_manager.check_write_permission(
                url=self.get_ref_url(),  # type: ignore[attr-defined]
                depth="infinity",
                token_list=self.environ.get("wsgidav.ifLockTokenList", []),
                principal=self.environ.get("wsgidav.user_name"),
            )
        with dav_errors():
            self.provider.delete_item(actor_of(self.environ), self.node_id, self.view)
        self.provider.drop_locks(self.get_ref_url())  # type: ignore[attr-defined]
        self.provider.forget(self.environ)
        return True

    @logs_unexpected
    def handle_move(self, dest_path: str) -> bool:
        parent, name, existing = self._split_destination(dest_path)
        assert parent.view is not None
        with dav_errors():
            replaced = self.provider.files.move(
                actor_of(self.environ),
                self.node_id,
                parent.view,
                name,
                overwrite=_overwrite(self.environ),
                seen=self.view,
                may_download=self._may_download,
            )
        self.provider.drop_locks(self.get_ref_url())  # type: ignore[attr-defined]
        self.provider.forget(self.environ)
        # A file moved onto a file is a new version of it, which keeps its locks (RFC 4918
        # 7.7), as for COPY; anything else replaced went to the trash.
        if replaced is not None and not moves_in_as_version(self.is_collection, replaced, name):
            self._drop_locks_at(dest_path, existing)
        # The destination named the node itself: a case- or normalization-only rename.
        renamed = bool(existing and existing.view and existing.view.id == self.node_id)
        self.environ["davserver.status"] = 204 if replaced or renamed else 201
        return True

    def _may_download(self, node_ids: list[uuid.UUID]) -> bool:
        ctx = self.provider.access(self.environ)
        rights = self.provider.namespace.rights_on(ctx, node_ids)
        return all(rights[node_id] & Perm.DOWNLOAD for node_id in node_ids)

    @logs_unexpected
    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        # A space added to the namespace may decide what a COPY into it means (a package
        # pins the current versions): its folder's ``receive_copy``.
        into = self.provider.get_resource_inst(util.get_uri_parent(dest_path), self.environ)
        receive = getattr(into, "receive_copy", None)
        if receive is not None:
            name = util.get_uri_name(dest_path.rstrip("/"))
            return bool(receive(self, name, depth_infinity=depth_infinity))
        parent, name, existing = self._split_destination(dest_path)
        assert parent.view is not None
        with dav_errors():
            replaced = self.provider.files.copy(
                actor_of(self.environ),
                self.node_id,
                parent.view,
                name,
                recursive=depth_infinity,
                overwrite=_overwrite(self.environ),
                seen=self.view,
            )
        self.provider.forget(self.environ)
        # A file copied onto a file is a new version of it, which keeps its locks; anything
        # else replaced went to the trash.
        if replaced is not None and (replaced.is_folder or self.is_collection):
            self._drop_locks_at(dest_path, existing)
        self.environ["davserver.status"] = 204 if replaced else 201
        return True

    def _drop_locks_at(self, dest_path: str, existing: _NodeResource | None) -> None:
        """Drop the locks of what a COPY or MOVE replaced at ``dest_path``: the resource the
        request found there, or (when it appeared meanwhile) the one there now."""
        found: Any = existing
        if found is None:
            found = self.provider.get_resource_inst(dest_path, self.environ)
        if found is not None:
            self.provider.drop_locks(found.get_ref_url())


def _overwrite(environ: dict[str, Any]) -> bool:
    """Whether the client agreed that a COPY or MOVE replace what is at its destination
    (``Overwrite: T``, the default; WsgiDAV has upper-cased the header)."""
    return environ.get("HTTP_OVERWRITE", "T") != "F"


# The methods that only read: what every item accepts. Items that accept fewer methods than a
# file or folder does say which in ``accepted_methods()``, for OPTIONS and a 405's Allow.
READING = frozenset({"OPTIONS", "GET", "HEAD", "PROPFIND"})


class VirtualCollection(DAVCollection):
    """A read-only folder that only lists names: ``/``, ``/groups/``, ``/shared/``, an owner
    in ``/shared/``. Nothing can be created, changed or locked in it."""

    def accepted_methods(self) -> frozenset[str]:
        return READING

    def __init__(self, path: str, environ: dict[str, Any], names: list[str]) -> None:
        DAVCollection.__init__(self, path, environ)
        self.names = names

    def get_member_names(self) -> list[str]:
        return list(self.names)

    def get_display_name(self) -> str:
        return util.get_uri_name(self.path.rstrip("/"))

    def get_member_list(self) -> list[Any]:
        """The members, from a few queries where the namespace can find them together
        (``/groups/``, ``/shared/<owner>/``, ``/users/``: ``NamespaceService.members``), else one by
        one (WsgiDAV's way: a path lookup and its dead properties each)."""
        parts = [p for p in self.path.split("/") if p]
        provider = self.provider
        found = provider.namespace.members(provider.access(self.environ), parts)
        if found is None:
            members: list[Any] = DAVCollection.get_member_list(self)
            return members
        dead = provider.files.dead_properties(reached.view.id for _, reached in found)
        return [
            provider.resource_for(
                self.path + name, self.environ, reached.view, dead[reached.view.id], reached.rights
            )
            for name, reached in found
        ]

    def prevent_locking(self) -> bool:
        return True

    def get_last_modified(self) -> float:
        return time.time()

    @logs_unexpected
    def handle_move(self, dest_path: str) -> bool:
        raise DAVError(HTTP_FORBIDDEN, context_info=f"{self.path} cannot be moved")

    @logs_unexpected
    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        raise DAVError(HTTP_FORBIDDEN, context_info=f"{self.path} cannot be copied")


class FolderResource(_NodeResource, DAVCollection):
    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        view: NodeView,
        dead: dict[str, bytes] | None = None,
        rights: Perm = Perm.NONE,
    ) -> None:
        DAVCollection.__init__(self, path, environ)
        self._init_node(view, dead, rights)

    def _readable_children(self) -> list[Reached]:
        assert self.view is not None
        return self.provider.namespace.children(
            self.provider.access(self.environ), Reached(self.view, self.rights)
        )

    def get_member_names(self) -> list[str]:
        return [child.view.name for child in self._readable_children()]

    def get_member_list(self) -> list[_NodeResource]:
        """The members the user may read, from one query, with their dead properties from
        one more; their rights follow from this folder's (no query per member)."""
        return list(self.iter_members())

    def iter_members(self, *, remember: bool = True) -> Iterator[_NodeResource]:
        """``get_member_list`` one member at a time: both queries run before the first is
        made, and each member's rows are let go once it is made, so a caller that is done
        with each member before it takes the next (PROPFIND) never holds them all as
        resources. ``remember``: whether this request looks the members up again (see
        ``DavProvider.resource_for``)."""
        assert self.view is not None
        children = self._readable_children()
        dead = self.provider.files.children_dead_properties(self.view.id)
        base = self.path.rstrip("/") + "/"
        children.reverse()
        while children:
            child = children.pop()
            yield self.provider.resource_for(
                base + child.view.name,
                self.environ,
                child.view,
                dead.pop(child.view.id, {}),
                child.rights,
                remember=remember,
            )

    def get_member(self, name: str) -> _NodeResource | None:
        return self.provider.get_resource_inst(util.join_uri(self.path, name), self.environ)

    def create_empty_resource(self, name: str) -> _NodeResource:
        """A PUT's new file is created when its body has arrived, not before; a LOCK's now.

        WsgiDAV makes a LOCK's file before it checks any lock, so the locks that forbid
        adding to this folder (its own, or one with depth infinity above) are checked here
        first, as for a PUT. A name taken meanwhile (another LOCK or a PUT won the race) is
        locked as it is found: the lock then conflicts with the winner's (423), or is taken
        on the file that is there (200, see ``dispatch.FOUND_KEY``).
        """
        assert self.view is not None
        path = util.join_uri(self.path, name)
        new = FileResource(
            path, self.environ, None, rights=self.rights, parent=self.view, name=name
        )
        if self.environ.get("REQUEST_METHOD") == "PUT":
            return new
        lock_manager = self.provider.lock_manager
        if lock_manager is not None:
            tokens = self.environ.get("wsgidav.ifLockTokenList", [])
            principal = self.environ.get("wsgidav.user_name")
            lock_manager.check_write_permission(
                url=self.get_ref_url(), depth="0", token_list=tokens, principal=principal
            )
            # What refuses this lock, refused before the file is made (WsgiDAV's own checks,
            # run later, left the file behind): an owner too long, and the locks above that
            # refuse it (an exclusive one with depth infinity, or a shared one when this is
            # exclusive), even to their holder.
            _check_requested_owner(self.environ)
            lock_manager._check_lock_permission(
                new.get_ref_url(),
                "write",
                _requested_scope(self.environ),
                "0",
                tokens,
                principal,
            )
        with dav_errors():
            try:
                view = self.provider.files.create_empty_file(
                    actor_of(self.environ), self.view, name
                )
            except AlreadyExists:
                view = None
        self.provider.forget(self.environ)
        if view is None:
            found = self.provider.get_resource_inst(path, self.environ)
            if not isinstance(found, _NodeResource):
                raise DAVError(HTTP_CONFLICT, context_info=f"{name!r} changed meanwhile")
            self.environ[FOUND_KEY] = True
            return found
        return FileResource(path, self.environ, view, rights=self.rights)

    def create_collection(self, name: str) -> None:
        assert self.view is not None
        with dav_errors(MKCOL_STATUS):
            self.provider.files.create_folder(actor_of(self.environ), self.view, name)
        self.provider.forget(self.environ)

    def support_recursive_delete(self) -> bool:
        return True


def members_of(collection: Any) -> Iterable[Any]:
    """The members of a collection for a caller that is done with each before it takes the
    next (a listing): made one at a time where the collection can (``iter_members``: a
    folder's, /trash/'s), else all at once."""
    if isinstance(collection, FolderResource):
        return collection.iter_members(remember=False)
    one_at_a_time = getattr(collection, "iter_members", None)
    if one_at_a_time is not None:
        return cast(Iterable[Any], one_at_a_time())
    members: list[Any] = collection.get_member_list()
    return members


class FileResource(_NodeResource, DAVNonCollection):
    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        view: NodeView | None,
        dead: dict[str, bytes] | None = None,
        *,
        rights: Perm = Perm.NONE,
        parent: NodeView | None = None,
        name: str | None = None,
    ) -> None:
        DAVNonCollection.__init__(self, path, environ)
        self._init_node(view, dead, rights)
        self._parent = parent
        self._new_name = name
        self._writer: BlobWriter | None = None
        self._expected_version: uuid.UUID | None = None
        self._must_be_new = False
        self._content_type: str | None = None
        self._expected_digests: dict[str, str] = {}
        self._allowance: int | None = None
        self._kept_mtime = False  # the upload kept the request's X-OC-Mtime
        self._began = 0.0  # time.monotonic() when the body began to arrive

    def _parent_view(self) -> NodeView:
        """The folder this file is (or is being created) in."""
        if self._parent is not None:
            return self._parent
        parent: NodeView | None
        if self.view is not None and self.view.parent_id is not None:
            # An existing file: its folder was looked up with its path, unless the file is
            # reached on its own (a shared file), when this user may not reach its folder.
            above = self.provider.looked_up(util.get_uri_parent(self.path), self.environ)
            if isinstance(above, Reached) and above.view.id == self.view.parent_id:
                parent = above.view
            else:
                parent = self.provider.files.resolve(self.view.parent_id, [])
        else:
            parent_res = self.provider.get_resource_inst(
                util.get_uri_parent(self.path), self.environ
            )
            parent = parent_res.view if isinstance(parent_res, FolderResource) else None
        if parent is None:
            raise DAVError(409)
        self._parent = parent
        return parent

    def get_content_length(self) -> int:
        return self.view.size if self.view else 0

    def get_content_type(self) -> str:
        if self.view and self.view.mime_type:
            return self.view.mime_type
        return guess_mime_type(self.view.name if self.view else self.path)

    def get_etag(self) -> str:
        if self.view and self.view.sha256:
            return self.view.sha256
        return EMPTY_SHA256

    def support_etag(self) -> bool:
        return True

    def finalize_headers(self, environ: dict[str, Any], response_headers: list[Any]) -> None:
        """GET and HEAD: the RFC 9530 digest of the whole file, whatever range is sent; and
        no-cache, or a browser shows a file from its cache, unasked, for a tenth of the time
        since it last changed (heuristic freshness, RFC 9111 4.2.2); with the ETag, asking
        is a 304. A HEAD answers 404, as the GET would, when the bytes are lost."""
        if environ["REQUEST_METHOD"] == "HEAD" and self.view is not None:
            with dav_errors():
                self.provider.files.check_content(self.view)
        response_headers.append(("Repr-Digest", repr_digest(self.get_etag())))
        response_headers.append(("Cache-Control", "no-cache"))

    def support_ranges(self) -> bool:
        return True

    def support_recursive_move(self, dest_path: str) -> bool:
        return False

    def get_content(self) -> BinaryIO:
        """Only GET reads the bytes (HEAD and a 304 do not): this is where a download is
        logged, once the bytes are found."""
        assert self.view is not None
        return logged_content(self.provider.files, self, self.view)

    # -- writing: the body goes to the blob store, then one transaction records it

    def begin_write(self, *, content_type: str | None = None) -> _UploadSink:
        environ = self.environ
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            # macOS Finder sends its uploads chunked, and their length in this header.
            length = environ.get("HTTP_X_EXPECTED_ENTITY_LENGTH", "").strip()
        else:
            length = str(environ.get("CONTENT_LENGTH", "")).strip()
        expected_length = int(length) if length.isascii() and length.isdigit() else None
        if self.view is not None and environ.get("HTTP_IF_MATCH", "").strip() not in ("", "*"):
            self._expected_version = self.view.current_version_id
        # "If-None-Match: *" held when the request began (nothing there); it must still hold
        # when the upload is recorded, or of two clients creating one file both "create" it.
        self._must_be_new = (
            self.view is None and environ.get("HTTP_IF_NONE_MATCH", "").strip() == "*"
        )
        self._content_type = _file_type(content_type)
        self._expected_digests = expected_digests(environ)
        with dav_errors():
            self._allowance = self.provider.files.upload_allowance(
                actor_of(environ), self.view or self._parent_view(), self.view
            )
        if self._allowance is not None and (expected_length or 0) > self._allowance:
            with dav_errors():
                raise QuotaExceeded(
                    f"{expected_length} bytes do not fit: {self._allowance} are left"
                )
        with dav_errors():
            self._writer = self.provider.files.blobs.writer()
        self._began = time.monotonic()
        return _UploadSink(self._writer, expected_length, self._allowance)

    def end_write(self, *, with_errors: bool) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if with_errors:
            writer.abort()
            return
        long = time.monotonic() - self._began > _RECHECK_AFTER
        try:
            parent = self._parent_view()  # before finish(): nothing to clean up if it fails
            if long:
                self._may_still_write(parent)
        except BaseException:
            writer.abort()
            raise
        with dav_errors():
            blob = writer.finish(self._expected_digests)
        # An existing file keeps its own name: the URL's may be another (a shared entry told
        # apart from a namesake, ``/shared/<owner>/doc (2).txt``), which is not in its folder.
        name = self._new_name or (self.view.name if self.view else util.get_uri_name(self.path))
        seconds = self.environ.get(MTIME_KEY)  # X-OC-Mtime, checked before the PUT began
        with dav_errors():
            mtime = None if seconds is None else parse_client_time(seconds)
            view, created = self.provider.files.commit_upload(
                actor_of(self.environ),
                parent,
                name,
                blob,
                content_type=self._content_type,
                expected_version_id=self._expected_version,
                must_be_new=self._must_be_new,
                # A quota set while a long upload ran holds for it too.
                enforce_quota=self._allowance is not None or long,
                lock_since=self._held_lock_since(),
                mtime=mtime,
            )
        self._kept_mtime = mtime is not None
        self.environ[CREATED_KEY] = created
        self.view = view
        self.provider.forget(self.environ)
        self.provider.variants.after_upload(view)

    def _may_still_write(self, parent: NodeView) -> None:
        """Forbidden when the uploader may no longer write the file, or (when the file is
        gone, or new) the folder it is made in, while the body arrived: a grant revoked, a
        removal from the group it came through, the account disabled. Rights were read when
        the request began; a long upload landed after the revoke had taken effect for every
        other request. When both are gone, recording the upload fails (409) or makes the
        file as a short upload's would."""
        namespace = self.provider.namespace
        ids = [node.id for node in (self.view, parent) if node is not None]
        rights = namespace.rights_now(actor_of(self.environ).user_id, ids)  # none on one gone
        if rights is None:
            raise DAVError(
                HTTP_FORBIDDEN, context_info="your account was disabled: nothing was stored"
            )
        for node_id in ids:
            if rights[node_id] & Perm.WRITE:
                return
            if namespace.live([node_id]):  # there, and no longer theirs to write
                raise DAVError(
                    HTTP_FORBIDDEN, context_info="you may no longer write here: nothing was stored"
                )

    def set_last_modified(self, dest_path: str, time_stamp: Any, *, dry_run: bool) -> bool:
        """WsgiDAV sets a PUT's X-OC-Mtime once the upload is done, in a transaction of its
        own, which could land on the version of another upload committed in between; the
        upload kept it already, with its bytes (``end_write``)."""
        if self._kept_mtime:
            return True
        return super().set_last_modified(dest_path, time_stamp, dry_run=dry_run)

    def _held_lock_since(self) -> dt.datetime | None:
        """When the lock the uploader holds on this file (and sent the token of) was taken:
        uploads under one lock coalesce into one version."""
        storage = getattr(self.provider.lock_manager, "storage", None)
        if self.view is None or self.view.current_version_id is None:
            return None  # nothing to coalesce with
        if not isinstance(storage, SqlLockStorage):
            return None
        return storage.held_since(
            self.environ.get("wsgidav.ifLockTokenList") or [],
            url=self.get_ref_url(),
            principal=self.environ.get("wsgidav.user_name"),
        )


def _check_requested_owner(environ: dict[str, Any]) -> None:
    """DAVError(400) when the owner a LOCK's body gives is over the limit
    (``lock_storage.check_owner``)."""
    root = environ.get(BODY_KEY)
    owner = None if root is None else root.find("{DAV:}owner")
    if owner is not None:
        check_owner(etree.tostring(owner))


def _requested_scope(environ: dict[str, Any]) -> str:
    """The scope a LOCK asks for in its body (read by then): "shared" or "exclusive"."""
    root = environ.get(BODY_KEY)
    shared = root is not None and root.find("{DAV:}lockscope/{DAV:}shared") is not None
    return "shared" if shared else "exclusive"


def _file_type(content_type: str | None) -> str | None:
    """The type a PUT's Content-Type gives the file, or None to type it by its name."""
    if content_type is None or content_type.split(";")[0].strip().lower() in _UNTYPED:
        return None
    return content_type


class _UploadSink:
    """The file object WsgiDAV's PUT writes into.

    Refuses a body of another length than announced (Content-Length, or for a chunked one
    macOS Finder's X-Expected-Entity-Length), and cuts off one (chunked) that grows past what
    the quota leaves (``allowance``); either way nothing is stored.
    """

    def __init__(
        self, writer: BlobWriter, expected_length: int | None, allowance: int | None
    ) -> None:
        self._writer = writer
        self._expected = expected_length
        self._allowance = allowance

    def write(self, data: bytes) -> int:
        if self._allowance is not None and self._writer.bytes_written + len(data) > self._allowance:
            with dav_errors():
                raise QuotaExceeded(
                    f"the upload grew past the {self._allowance} bytes the quota leaves"
                )
        with dav_errors():
            return self._writer.write(data)

    def close(self) -> None:
        if self._expected is not None and self._writer.bytes_written != self._expected:
            raise DAVError(
                HTTP_BAD_REQUEST,
                context_info=(
                    f"the body ended after {self._writer.bytes_written} of "
                    f"{self._expected} bytes; nothing was stored"
                ),
            )
