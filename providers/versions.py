"""``/versions/``: every file's history as a read-only tree, and ``GET <file>?version=N``.

Folders list their folders and files, each file as a folder of its versions; a version entry
answers GET and HEAD (with Range) to whoever may download the file, and COPY onto a file
restores it (a new version sharing the old one's blob) or, to a new name, makes a new file.
Everything else is refused. ``GET <file>?version=N`` is answered by the same entry resource,
so both give the same headers, ranges and conditional answers. A version's thumbnail or preview
(``?thumbnail=``, ``?preview=`` on its entry, or with ``?version=N`` on the file) needs only
READ, as the current version's does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs

from wsgidav import util
from wsgidav.dav_provider import DAVCollection, DAVNonCollection

from davserver.errors import BadRequest, Conflict, Forbidden, NotFound
from davserver.services.namespace import Reached
from davserver.services.permissions import Perm, require
from davserver.services.tree import NodeView
from davserver.services.versions import (
    SPACE,
    History,
    HistoryFolder,
    VersionEntry,
    VersionInfo,
    VersionService,
    entry_name,
    version_no_of,
)
from providers import live_props
from providers.computed import DS, ComputedProperties, StoredBytes, prop
from providers.conditions import served_range
from providers.digests import repr_digest
from providers.dispatch import destination_path
from providers.error_printer import logs_unexpected
from providers.errors import dav_errors
from providers.gate import check_destination
from providers.resources import (
    READING,
    FileResource,
    FolderResource,
    actor_of,
    guess_mime_type,
)
from providers.trash import TrashedFile
from providers.variants import wants_variant

if TYPE_CHECKING:
    from providers.provider import DavProvider

VERSION_NUMBER = f"{DS}version-number"
SIZE = f"{DS}size"
AUTHOR = f"{DS}author"
UPLOADED_AT = f"{DS}uploaded-at"
SHA256 = f"{DS}sha256"
CURRENT = f"{DS}current"
CURRENT_VERSION = f"{DS}current-version"
_READ_ONLY = "the version history is read-only; COPY a version onto its file to restore it"


def register(provider: DavProvider, service: VersionService) -> None:
    """Give the items of the ``/versions/`` space their resources."""
    factories = provider.resource_factories
    factories[HistoryFolder] = lambda p, path, environ, item: HistoryFolderResource(
        path, environ, item, service
    )
    factories[History] = lambda p, path, environ, item: HistoryResource(
        path, environ, item, service
    )
    factories[VersionEntry] = lambda p, path, environ, item: VersionResource(
        path, environ, item, service
    )


class _InHistory(ComputedProperties):
    """Browsing is all the history allows, apart from GET and COPY of a version."""

    read_only_reason = _READ_ONLY
    provider: DavProvider
    reached: Reached

    def accepted_methods(self) -> frozenset[str]:
        return READING

    def check_request(self, environ: dict[str, Any]) -> None:
        if environ["REQUEST_METHOD"] not in READING:
            raise Forbidden(self.read_only_reason)

    def get_creation_date(self) -> float:
        return self.reached.view.created_at.timestamp()

    def get_last_modified(self) -> float:
        return self.reached.view.last_modified.timestamp()

    def get_display_name(self) -> str:
        return self.reached.view.name or util.get_uri_name(self.path.rstrip("/"))  # type: ignore[attr-defined]


class HistoryFolderResource(_InHistory, DAVCollection):
    """A folder in /versions/: its folders, and its files as folders of versions."""

    def __init__(
        self, path: str, environ: dict[str, Any], item: HistoryFolder, service: VersionService
    ) -> None:
        DAVCollection.__init__(self, path.rstrip("/") + "/", environ)
        self.reached = item.reached
        self.service = service

    def _members(self) -> list[Reached]:
        return self.provider.namespace.children(self.provider.access(self.environ), self.reached)

    def get_member_names(self) -> list[str]:
        return [child.view.name for child in self._members()]

    def get_member_list(self) -> list[Any]:
        base = self.path
        out: list[Any] = []
        for child in self._members():
            path = base + child.view.name
            if child.view.is_folder:
                out.append(
                    HistoryFolderResource(path, self.environ, HistoryFolder(child), self.service)
                )
            else:
                out.append(HistoryResource(path, self.environ, History(child), self.service))
        return out


class HistoryResource(_InHistory, DAVCollection):
    """A file in /versions/: a folder with one entry per version."""

    def __init__(
        self, path: str, environ: dict[str, Any], item: History, service: VersionService
    ) -> None:
        DAVCollection.__init__(self, path.rstrip("/") + "/", environ)
        self.reached = item.reached
        self.service = service

    def _entries(self) -> list[VersionEntry]:
        return [VersionEntry(self.reached, v) for v in self.service.history(self.reached.view.id)]

    def get_member_names(self) -> list[str]:
        return [entry.name for entry in self._entries()]

    def get_member_list(self) -> list[Any]:
        return [
            VersionResource(self.path + entry.name, self.environ, entry, self.service)
            for entry in self._entries()
        ]

    def computed_properties(self) -> dict[str, str]:
        view = self.reached.view
        if view.version_no is None:
            return {}
        return {CURRENT_VERSION: prop(CURRENT_VERSION, view.version_no)}


class VersionResource(StoredBytes, _InHistory, DAVNonCollection):
    """One version of a file: its bytes and who made it when."""

    def __init__(
        self, path: str, environ: dict[str, Any], item: VersionEntry, service: VersionService
    ) -> None:
        DAVNonCollection.__init__(self, path.rstrip("/"), environ)
        self.reached = item.reached
        self.version = item.version
        self.service = service

    @property
    def rights(self) -> Perm:
        return self.reached.rights

    def accepted_methods(self) -> frozenset[str]:
        return READING | {"COPY"}  # onto a file restores the version

    def check_request(self, environ: dict[str, Any]) -> None:
        method = environ["REQUEST_METHOD"]
        if method in ("GET", "HEAD"):
            if not wants_variant(environ):  # a thumbnail or preview needs only READ
                require(self.rights, Perm.DOWNLOAD, "download")
        elif method == "COPY":
            if not self._restores_its_file(environ):
                require(self.rights, Perm.DOWNLOAD, "copy")
            check_destination(self.provider, environ)  # write on the file, or where it lands
        else:
            super().check_request(environ)

    def _restores_its_file(self, environ: dict[str, Any]) -> bool:
        """Whether a COPY lands on the version's own file: a restore, which takes no bytes
        anywhere the restorer could read them (the file's rights stay theirs), so it needs
        write on the file only. Copied elsewhere, a version's bytes need download."""
        dest = destination_path(environ)
        target = None if dest is None else self.provider.get_resource_inst(dest, environ)
        view = getattr(target, "view", None)
        return isinstance(view, NodeView) and view.id == self.reached.view.id

    def computed_properties(self) -> dict[str, str]:
        version = self.version
        props = {
            VERSION_NUMBER: prop(VERSION_NUMBER, version.version_no),
            SIZE: prop(SIZE, version.size),
            UPLOADED_AT: prop(UPLOADED_AT, util.get_rfc3339_time(version.uploaded_at.timestamp())),
            SHA256: prop(SHA256, version.sha256),
            # rclone compares these (``rclone check``), as on the file itself.
            live_props.CHECKSUMS: live_props.checksums(version.sha1, version.md5),
            CURRENT: prop(CURRENT, "true" if version.is_current else "false"),
        }
        if version.author is not None:
            props[AUTHOR] = prop(AUTHOR, version.author)
        return props

    def get_display_name(self) -> str:
        return util.get_uri_name(self.path)

    def variant_of(self) -> tuple[NodeView, VersionInfo]:
        """What a thumbnail or preview of this entry shows: this version of the file."""
        return self.reached.view, self.version

    def get_creation_date(self) -> float:
        return self.version.uploaded_at.timestamp()

    def get_last_modified(self) -> float:
        return self.version.last_modified.timestamp()

    def get_content_length(self) -> int:
        return self.version.size

    def get_content_type(self) -> str:
        view = self.reached.view
        return view.mime_type or guess_mime_type(view.name)

    def get_etag(self) -> str:
        return self.version.sha256

    def finalize_headers(self, environ: dict[str, Any], response_headers: list[Any]) -> None:
        """A HEAD answers 404, as the GET would, when the bytes are lost. no-cache, as for the
        file itself: a version's URL can come to name other bytes (another file uploaded at
        the path after a rename, the newest version replaced in place)."""
        if environ["REQUEST_METHOD"] == "HEAD":
            with dav_errors():
                self.service.check_bytes(self.version)
        response_headers.append(("Repr-Digest", repr_digest(self.version.sha256)))
        response_headers.append(("Cache-Control", "no-cache"))

    def get_content(self) -> BinaryIO:
        """GET only: the download is logged once the bytes are found."""
        version = self.version
        with dav_errors():
            require(self.rights, Perm.DOWNLOAD, "download")
            content = self.service.open(version)
            self.provider.files.record_download(
                actor_of(self.environ),
                self.reached.view.id,
                version.id,
                size=version.size,
                version_no=version.version_no,
                served_range=served_range(self.environ, version.sha256, self.get_last_modified()),
            )
        return content

    @logs_unexpected
    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        """Onto a file: restore (a new version of it); to a new name: a new file."""
        provider, environ = self.provider, self.environ
        existing = provider.get_resource_inst(dest_path, environ)
        with dav_errors():
            if existing is None:
                folder = provider.get_resource_inst(util.get_uri_parent(dest_path), environ)
                if not isinstance(folder, FolderResource) or folder.view is None:
                    raise Forbidden("a version can be copied onto a file or into a folder")
                self.service.copy_to(
                    actor_of(environ),
                    self.version,
                    folder.view,
                    util.get_uri_name(dest_path.rstrip("/")),
                    mime_type=self.reached.view.mime_type,
                )
                status = 201
            elif isinstance(existing, FileResource) and existing.view is not None:
                self.service.restore(actor_of(environ), self.version, existing.view)
                status = 204
            else:
                raise Conflict("a version can only be restored onto a file")
        provider.forget(environ)
        environ["davserver.status"] = status
        return True


# -- GET <file>?version=N


def wants_version(environ: dict[str, Any]) -> bool:
    """True when a GET or HEAD asks for an older version of a file."""
    query = environ.get("QUERY_STRING", "")
    return "version" in query and "version" in parse_qs(query, keep_blank_values=True)


def respond_version(
    provider: DavProvider, res: Any, environ: dict[str, Any], start_response: Any, default: Any
) -> Any:
    """Answer ``GET <file>?version=N`` as ``GET /versions/<file>/<name>.vN.<ext>`` would:
    400 for a malformed N, 404 for a version that does not exist."""
    entry = version_entry(provider, res, environ)
    with dav_errors():
        require(entry.rights, Perm.DOWNLOAD, "download")
    path = environ["PATH_INFO"].rstrip("/")
    provider.substitute(environ, path, VersionEntry(entry.reached, entry.version))
    return default(environ, start_response)


def version_entry(provider: DavProvider, res: Any, environ: dict[str, Any]) -> VersionResource:
    """The entry in /versions/ of the version ``?version=N`` names of file ``res``: BadRequest
    for a malformed N or a folder, NotFound for a version that does not exist."""
    with dav_errors():
        number = _version_number(environ)
        if isinstance(res, TrashedFile):
            raise Conflict("a file's versions are read again once it is restored from the trash")
        if not isinstance(res, FileResource) or res.view is None:
            raise BadRequest("only files have versions")
        path = environ["PATH_INFO"].rstrip("/")
        entry = provider.get_resource_inst(
            f"/{SPACE}{path}/{entry_name(res.view.name, number)}", environ
        )
        if not isinstance(entry, VersionResource):
            raise NotFound(f"{res.view.name} has no version {number}")
    return entry


def _version_number(environ: dict[str, Any]) -> int:
    values = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)["version"]
    text = values[0].strip() if len(values) == 1 else ""
    if not (text.isascii() and text.isdigit()) or not text.strip("0"):
        raise BadRequest("?version= takes one version number, 1 or more")
    number = version_no_of(text)
    if number is None:
        raise NotFound(f"no version {text}")
    return number
