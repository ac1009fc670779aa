"""``/packages/`` in a user's namespace: their packages, each as a folder and as a zip.

    /packages/                      the user's live packages (MKCOL <name>/ creates one)
    /packages/<name>/...            the pinned items, as folders following their archive paths
    /packages/<name>.zip            the whole package as one zip

The resolver answers with the dataclasses below; ``providers.packages`` gives them resources.
Resolving a path inside a package costs one query for the package and one for its items.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from davserver.services.namespace import AccessContext, NamespaceService, SpaceResolver
from davserver.services.package_archive import PackageView, PinnedItem
from davserver.services.packages import PackageService
from davserver.services.tree import name_key

SPACE = "packages"


@dataclass(frozen=True)
class PackagesRoot:
    """``/packages/``: the packages of ``owner_id`` are listed when asked for."""

    owner_id: uuid.UUID


@dataclass(frozen=True)
class PackageFolder:
    """A package's folder (``prefix`` "") or a folder inside it: the sub-folder names and the
    items directly in it."""

    package: PackageView
    prefix: str
    folders: tuple[str, ...]
    files: tuple[PinnedItem, ...]


@dataclass(frozen=True)
class PackageFile:
    package: PackageView
    item: PinnedItem


@dataclass(frozen=True)
class PackageZip:
    package: PackageView


def folder_of(package: PackageView, prefix: str) -> PackageFolder | None:
    """The folder at ``prefix`` ("" for the package's own), or None when no item is below it."""
    lead = prefix + "/" if prefix else ""
    folders: dict[str, None] = {}
    files: list[PinnedItem] = []
    for item in package.items:
        if not item.path.startswith(lead):
            continue
        first, slash, _ = item.path[len(lead) :].partition("/")
        if slash:
            folders.setdefault(first)
        else:
            files.append(item)
    if prefix and not folders and not files:
        return None
    return PackageFolder(package, prefix, tuple(folders), tuple(files))


def resolve_in_package(package: PackageView, names: list[str]) -> list[Any]:
    """What each prefix of ``names`` is inside ``package`` (a folder, then folders or a
    file), stopping at the first one that is not there."""
    root = folder_of(package, "")
    found: list[Any] = [root]
    prefix = ""
    for index, name in enumerate(names):
        path = f"{prefix}/{name_key(name)}" if prefix else name_key(name)
        folder = folder_of(package, path)
        if folder is not None:
            found.append(folder)
            prefix = path
            continue
        item = next((i for i in package.items if i.path == path), None)
        if item is not None and index == len(names) - 1:
            found.append(PackageFile(package, item))
        break
    return found


def resolver(packages: PackageService) -> SpaceResolver:
    """The ``/packages/`` space of ``NamespaceService.add_space``."""

    def resolve(_namespace: NamespaceService, ctx: AccessContext, rest: list[str]) -> list[Any]:
        owner_id = ctx.actor.user_id
        found: list[Any] = [PackagesRoot(owner_id)]
        if not rest:
            return found
        first = rest[0]
        if first.endswith(".zip"):
            package = packages.find(owner_id, first[: -len(".zip")])
            if package is not None and len(rest) == 1:
                found.append(PackageZip(package))
            return found
        package = packages.find(owner_id, first)
        if package is not None:
            found += resolve_in_package(package, rest[1:])
        return found

    return resolve
