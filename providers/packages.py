"""WebDAV resources of ``/packages/`` (see davserver.services.package_space).

    MKCOL  /packages/<name>/               create a package (default expiry)
    COPY   <file or folder> /packages/<name>/<path>
                                           pin current versions (no bytes copied)
    DELETE /packages/<name>/<path>         unpin an item, or everything below a folder
    DELETE /packages/<name>/               delete the package
    MOVE   /packages/<name>/<path> /packages/<name>/<new path>
                                           rename or move items within their package
    MOVE   /packages/<name>/ /packages/<new name>/
                                           rename the package
    GET    /packages/<name>/<path>         a pinned version's bytes
    GET    /packages/<name>.zip            the whole package as one zip (HEAD, Range)
    GET    <folder>/?zip                   a folder's current files as one zip, built as a
                                           package's is (HEAD, Range, a strong ETag)

Nothing here can be locked, PROPPATCHed or PUT, nor moved out of its package (or into one: only
COPY pins). Each resource checks requests aimed at it (``check_request``, for a MOVE its
destination too) and what may arrive in it from elsewhere (``check_incoming``) for the gate;
the rules themselves are the package service's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

from wsgidav import util
from wsgidav.dav_error import HTTP_BAD_REQUEST, HTTP_NOT_FOUND, DAVError
from wsgidav.dav_provider import DAVCollection, DAVNonCollection

from davserver.errors import Forbidden
from davserver.services.package_archive import PackageArchive, PackageView, PinnedItem
from davserver.services.package_space import (
    PackageFile,
    PackageFolder,
    PackagesRoot,
    PackageZip,
    folder_of,
)
from davserver.services.packages import PackageService
from providers.computed import StoredBytes
from providers.conditions import served_range
from providers.dispatch import destination_path
from providers.error_printer import logs_unexpected
from providers.errors import dav_errors
from providers.resources import READING, actor_of, guess_mime_type

if TYPE_CHECKING:
    from providers.provider import DavProvider
    from providers.resources import _NodeResource

_HOW_TO_CHANGE = (
    "a package is changed by COPYing files or folders into it, MOVE within it, and DELETE"
)
_CHANGES = READING | {"DELETE", "MOVE"}
# The package whose items check_request found downloadable in this request (environ key).
_CHECKED = "davserver.package_checked"
# Pinned versions stay in their package; the files they were pinned from are where they were.
_NO_COPY_OUT = "a package's items are not copied out of it: GET them, or COPY the files"


def _refuse_copy_out(environ: dict[str, Any]) -> None:
    if environ["REQUEST_METHOD"] == "COPY":
        raise Forbidden(_NO_COPY_OUT)


def register(provider: DavProvider, service: PackageService) -> None:
    """Give the provider a resource for each kind of item of the packages space."""
    factories: dict[type, Callable[[DavProvider, str, dict[str, Any], Any], Any]] = {
        PackagesRoot: lambda p, path, env, item: PackagesRootResource(path, env, service, item),
        PackageFolder: lambda p, path, env, item: PackageFolderResource(path, env, service, item),
        PackageFile: lambda p, path, env, item: PackageFileResource(path, env, service, item),
        PackageZip: lambda p, path, env, item: PackageZipResource(path, env, service, item),
        FolderZip: lambda p, path, env, item: FolderZipResource(path, env, service, item),
    }
    provider.resource_factories.update(factories)

    def folder_zip(folder: _NodeResource, environ: dict[str, Any], start: Any, dav: Any) -> Any:
        """``GET <folder>?zip``: WsgiDAV's GET (conditions, Range) on the folder's zip."""
        assert folder.view is not None  # a folder that was found
        with dav_errors():
            found = service.of_folder(provider.access(environ), folder.view, folder.rights)
        provider.substitute(environ, environ["PATH_INFO"], FolderZip(found))
        return dav(environ, start)

    provider.folder_zip = folder_zip


@dataclass(frozen=True)
class FolderZip:
    """A folder, answered as its zip for the rest of the request."""

    package: PackageView


def _allow(environ: dict[str, Any], allowed: frozenset[str], why: str) -> None:
    if environ["REQUEST_METHOD"] not in allowed:
        raise Forbidden(why)


class _Base:
    """What every resource here shares: no locks, no properties to set."""

    environ: dict[str, Any]
    provider: DavProvider
    service: PackageService

    def prevent_locking(self) -> bool:
        return True

    def set_last_modified(self, dest_path: str, time_stamp: Any, *, dry_run: bool) -> bool:
        return True  # MKCOL with X-OC-Mtime: a package's times are its own

    def _forget(self) -> None:
        self.provider.forget(self.environ)

    def _destination_folder(self, environ: dict[str, Any]) -> Any:
        """MOVE: the resource of the folder the Destination names a member of (None when
        there is none: WsgiDAV answers 409)."""
        dest = (destination_path(environ) or "").rstrip("/")
        return self.provider.get_resource_inst(util.get_uri_parent(dest), environ)

    def _check_move_within(self, environ: dict[str, Any], package: PackageView) -> None:
        """Items move only to a folder of their own package."""
        into = self._destination_folder(environ)
        if into is not None and not (
            isinstance(into, PackageFolderResource) and into.package.id == package.id
        ):
            raise Forbidden(
                "items of a package move only within it; to take one out, DELETE it here"
            )

    def _move_within(self, package: PackageView, path: str, dest_path: str) -> bool:
        """MOVE of the item or folder at ``path`` of ``package`` to ``dest_path`` (a path in
        the same package, as ``_check_move_within`` made sure)."""
        into = self._destination_folder(self.environ)
        assert isinstance(into, PackageFolderResource)
        new_path = into.member_path(util.get_uri_name(dest_path.rstrip("/")))
        existing = self.provider.get_resource_inst(dest_path, self.environ) is not None
        with dav_errors():
            self.service.move(actor_of(self.environ), package, path, new_path, replace=existing)
        self._forget()
        self.environ["davserver.status"] = 204 if existing else 201
        return True


class PackagesRootResource(_Base, DAVCollection):
    """``/packages/``: each live package as ``<name>/`` and ``<name>.zip``."""

    def __init__(
        self, path: str, environ: dict[str, Any], service: PackageService, item: PackagesRoot
    ) -> None:
        DAVCollection.__init__(self, path.rstrip("/") + "/", environ)
        self.service = service
        self.owner_id = item.owner_id
        self._packages: list[PackageView] | None = None

    def packages(self) -> list[PackageView]:
        if self._packages is None:
            self._packages = self.service.list_packages(self.owner_id)
        return self._packages

    def get_member_names(self) -> list[str]:
        return [name for p in self.packages() for name in (p.name, p.zip_name)]

    def get_member_list(self) -> list[Any]:
        members: list[Any] = []
        for package in self.packages():
            folder = folder_of(package, "")
            assert folder is not None  # a package's own folder always exists
            folder_path = util.join_uri(self.path, package.name)
            zip_path = util.join_uri(self.path, package.zip_name)
            members.append(PackageFolderResource(folder_path, self.environ, self.service, folder))
            members.append(
                PackageZipResource(zip_path, self.environ, self.service, PackageZip(package))
            )
        return members

    def get_display_name(self) -> str:
        return "packages"

    def get_last_modified(self) -> float:
        return time.time()

    def accepted_methods(self) -> frozenset[str]:
        return READING  # and MKCOL of a new package in it, a URL of its own

    def check_request(self, environ: dict[str, Any]) -> None:
        _allow(environ, READING | {"MKCOL"}, "this folder holds packages")

    def check_incoming(self, environ: dict[str, Any]) -> None:
        _allow(environ, frozenset({"MKCOL"}), "create a package with MKCOL /packages/<name>/")

    def create_collection(self, name: str) -> None:
        actor = actor_of(self.environ)
        with dav_errors():
            self.service.create(actor, actor.user_id, name)
        self._forget()


class PackageFolderResource(_Base, DAVCollection):
    """A package's folder, or a folder inside it (from the items' archive paths)."""

    def __init__(
        self, path: str, environ: dict[str, Any], service: PackageService, folder: PackageFolder
    ) -> None:
        DAVCollection.__init__(self, path.rstrip("/") + "/", environ)
        self.service = service
        self.folder = folder
        self.package = folder.package

    def get_member_names(self) -> list[str]:
        return [*self.folder.folders, *(_name(item) for item in self.folder.files)]

    def member_path(self, name: str) -> str:
        """The archive path of ``name`` in this folder."""
        return f"{self.folder.prefix}/{name}" if self.folder.prefix else name

    def get_member_list(self) -> list[Any]:
        members: list[Any] = []
        for name in self.folder.folders:
            sub = folder_of(self.package, self.member_path(name))
            assert sub is not None  # listed because items are below it
            sub_path = util.join_uri(self.path, name)
            members.append(PackageFolderResource(sub_path, self.environ, self.service, sub))
        for item in self.folder.files:
            members.append(
                PackageFileResource(
                    util.join_uri(self.path, _name(item)),
                    self.environ,
                    self.service,
                    PackageFile(self.package, item),
                )
            )
        return members

    def get_display_name(self) -> str:
        return self.folder.prefix.rpartition("/")[2] or self.package.name

    def get_creation_date(self) -> float:
        return self.package.created_at.timestamp()

    def get_last_modified(self) -> float:
        return self.package.modified_at.timestamp()

    def accepted_methods(self) -> frozenset[str]:
        return _CHANGES

    def check_request(self, environ: dict[str, Any]) -> None:
        _refuse_copy_out(environ)
        _allow(environ, _CHANGES | {"MKCOL"}, _HOW_TO_CHANGE)
        if environ["REQUEST_METHOD"] != "MOVE":
            return
        if self.folder.prefix:
            self._check_move_within(environ, self.package)
        elif not isinstance(self._destination_folder(environ), PackagesRootResource):
            raise Forbidden("a package is renamed by a MOVE to /packages/<new name>/")

    def check_incoming(self, environ: dict[str, Any]) -> None:
        _allow(environ, frozenset({"COPY"}), _HOW_TO_CHANGE)

    @logs_unexpected
    def handle_move(self, dest_path: str) -> bool:
        if self.folder.prefix:
            return self._move_within(self.package, self.folder.prefix, dest_path)
        with dav_errors():
            self.service.update(
                actor_of(self.environ),
                self.package,
                name=util.get_uri_name(dest_path.rstrip("/")),
            )
        self._forget()
        self.environ["davserver.status"] = 201  # a package of that name is refused (409)
        return True

    @logs_unexpected
    def receive_copy(self, source: _NodeResource, name: str, *, depth_infinity: bool) -> bool:
        """COPY of a file or folder to ``<this folder>/<name>``: pin its current versions
        there, replacing what was at that path (Overwrite: F was refused by WsgiDAV)."""
        if source.view is None:
            raise DAVError(HTTP_NOT_FOUND)
        if source.view.is_folder and not depth_infinity:
            raise DAVError(HTTP_BAD_REQUEST, context_info="a folder is pinned with Depth: infinity")
        dest = util.join_uri(self.path, name)
        existing = self.provider.get_resource_inst(dest, self.environ) is not None
        path = self.member_path(name)
        with dav_errors():
            self.service.add(
                actor_of(self.environ),
                self.package,
                self.provider.access(self.environ),
                source.view,
                path,
                replace=existing,
            )
        self._forget()
        self.environ["davserver.status"] = 204 if existing else 201
        return True

    def support_recursive_delete(self) -> bool:
        return True

    @logs_unexpected
    def handle_delete(self) -> bool:
        actor = actor_of(self.environ)
        with dav_errors():
            if self.folder.prefix:
                self.service.remove(actor, self.package, self.folder.prefix)
            else:
                self.service.delete(actor, self.package)
        self._forget()
        return True


class PackageFileResource(StoredBytes, _Base, DAVNonCollection):
    """One pinned version inside a package: its bytes, read-only."""

    def __init__(
        self, path: str, environ: dict[str, Any], service: PackageService, found: PackageFile
    ) -> None:
        DAVNonCollection.__init__(self, path.rstrip("/"), environ)
        self.service = service
        self.package = found.package
        self.item: PinnedItem = found.item

    def get_content_length(self) -> int:
        return self.item.size

    def get_content_type(self) -> str:
        return guess_mime_type(self.item.path)

    def get_etag(self) -> str:
        return self.item.sha256

    def get_creation_date(self) -> float:
        return self.item.added_at.timestamp()

    def get_last_modified(self) -> float:
        return self.item.mtime.timestamp()

    def get_display_name(self) -> str:
        return _name(self.item)

    def accepted_methods(self) -> frozenset[str]:
        return _CHANGES

    def check_request(self, environ: dict[str, Any]) -> None:
        _refuse_copy_out(environ)
        _allow(environ, _CHANGES, _HOW_TO_CHANGE)
        if environ["REQUEST_METHOD"] in ("GET", "HEAD"):
            ctx = self.provider.access(environ)
            self.service.check_item(ctx, self.package, self.item)
        elif environ["REQUEST_METHOD"] == "MOVE":
            self._check_move_within(environ, self.package)

    def check_incoming(self, environ: dict[str, Any]) -> None:
        _allow(environ, frozenset({"COPY"}), _HOW_TO_CHANGE)

    @logs_unexpected
    def handle_move(self, dest_path: str) -> bool:
        return self._move_within(self.package, self.item.path, dest_path)

    def finalize_headers(self, environ: dict[str, Any], response_headers: list[Any]) -> None:
        """A HEAD answers 404, as the GET would, when the bytes are lost."""
        if environ["REQUEST_METHOD"] == "HEAD":
            with dav_errors():
                self.service.check_item_bytes(self.item)

    def get_content(self) -> BinaryIO:
        """Only GET reads the bytes (HEAD does not): this is where a download is logged."""
        with dav_errors():
            return self.service.download_item(
                actor_of(self.environ),
                self.package,
                self.item,
                served_range=served_range(self.environ, self.get_etag(), self.get_last_modified()),
            )

    @logs_unexpected
    def handle_delete(self) -> bool:
        with dav_errors():
            self.service.remove(actor_of(self.environ), self.package, self.item.path)
        self._forget()
        return True


class PackageZipResource(StoredBytes, _Base, DAVNonCollection):
    """``/packages/<name>.zip``: deterministic bytes, so a strong ETag and byte ranges."""

    of_folder = False  # a folder's zip (``?zip``), not a package's

    def __init__(
        self, path: str, environ: dict[str, Any], service: PackageService, found: PackageZip
    ) -> None:
        DAVNonCollection.__init__(self, path.rstrip("/"), environ)
        self.service = service
        self.package = found.package
        self._layout: PackageArchive | None = None

    def layout(self) -> PackageArchive:
        if self._layout is None:
            with dav_errors():
                self._layout = self.service.layout(self.package)
        return self._layout

    def get_content_length(self) -> int:
        return self.layout().size

    def get_content_type(self) -> str:
        return "application/zip"

    def get_etag(self) -> str:
        return self.layout().etag

    def get_creation_date(self) -> float:
        return self.package.created_at.timestamp()

    def get_last_modified(self) -> float:
        return self.package.modified_at.timestamp()

    def finalize_headers(self, environ: dict[str, Any], response_headers: list[Any]) -> None:
        """A download's file name; and a HEAD answers 404, as the GET would, when bytes of
        an item are lost."""
        if environ["REQUEST_METHOD"] == "HEAD":
            with dav_errors():
                self.service.check_zip_bytes(self.package, folder=self.of_folder)
        name = self.package.zip_name
        # A quoted-string: a backslash would escape the next character, as a quote would end it.
        fallback = name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
        response_headers.append(
            (
                "Content-Disposition",
                f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}",
            )
        )

    def accepted_methods(self) -> frozenset[str]:
        return READING

    def check_request(self, environ: dict[str, Any]) -> None:
        _allow(environ, READING, "the zip is read-only; change the package's folder")
        if environ["REQUEST_METHOD"] in ("GET", "HEAD"):
            ctx = self.provider.access(environ)
            self.service.check_downloadable(ctx, self.package)
            environ[_CHECKED] = self.package.id  # so that get_content need not check again

    def check_incoming(self, environ: dict[str, Any]) -> None:
        raise Forbidden("the zip is read-only; change the package's folder")

    def get_content(self) -> BinaryIO:
        """Only GET reads the bytes (HEAD does not): this is where a download is logged."""
        ctx = self.provider.access(self.environ)
        with dav_errors():
            byte_range = served_range(self.environ, self.get_etag(), self.get_last_modified())
            archive = self.service.download(
                ctx,
                self.package,
                byte_range=byte_range,
                laid_out=self.layout(),
                checked=self.environ.get(_CHECKED) == self.package.id,
            )
        return archive.stream.open()  # type: ignore[return-value]


class FolderZipResource(PackageZipResource):
    """``<folder>/?zip``: the folder's current files, zipped as a package's pinned versions
    are (deterministic bytes while nothing changes in it: a strong ETag, byte ranges).

    It has no Last-Modified: its files' times are the clients' (X-OC-Mtime), and a deletion
    or a rename inside leaves them as they were, so no date would tell that the zip changed.
    Without one, If-Range by date sends the whole zip, and If-Modified-Since and
    If-Unmodified-Since are ignored; the ETag alone validates (RFC 9110, 13.1.5 and 8.8.2).
    """

    def get_last_modified(self) -> float | None:  # type: ignore[override]
        return None

    of_folder = True

    def check_request(self, environ: dict[str, Any]) -> None:
        _allow(environ, frozenset({"GET", "HEAD"}), "a folder's zip is read-only")

    def get_content(self) -> BinaryIO:
        """Only GET reads the bytes (HEAD does not): this is where the download is logged."""
        ctx = self.provider.access(self.environ)
        with dav_errors():
            byte_range = served_range(self.environ, self.get_etag(), self.get_last_modified())
            archive = self.service.download_folder(
                ctx, self.package, byte_range=byte_range, laid_out=self.layout()
            )
        return archive.stream.open()  # type: ignore[return-value]


def _name(item: PinnedItem) -> str:
    return item.path.rpartition("/")[2]
