"""Packages: named, expiring sets of pinned file versions, downloaded as one zip.

A package belongs to the user who created it; only they see it (``/packages/``, the JSON API),
and the command line manages anyone's. Adding a file pins its current version at a path inside
the archive (by default its name); adding a folder pins every live file below it at its path
relative to the folder's parent (``docs/a.txt``). Later uploads make new versions and leave the
package as it was. Adding needs DOWNLOAD on the item; paths that would escape the folder a zip
is extracted into, or collide with another item (letter case aside), are refused then, and
so are they when items are moved within their package.

Every download re-checks that the creator may still download every item: an item whose grant
was revoked, or whose file was deleted, makes the download fail with Forbidden naming it (the
creator can remove it); the zip never silently leaves files out. An expired package is gone
for every front (NotFound, not listed); its rows stay until ``purge_expired`` or a new package
of the same name replaces it, and keep its versions pinned until then.

Each change is one transaction with its logbook row, and so is each download (GET of the zip,
whole or a range; not HEAD). Logbook rows carry the package's name and id in their details,
as deleting a package clears the rows' package reference.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import uuid
import zlib
from collections.abc import Sequence
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from davserver.blobstore import BlobStore
from davserver.db import Base, Database
from davserver.db.types import utcnow
from davserver.errors import BadRequest, Conflict, Forbidden, InvalidName, NotFound
from davserver.models import Op
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.bounds import check_days, check_description, days_from_now
from davserver.services.lost_bytes import damaged_bytes, lost_bytes, open_stored, require_stored
from davserver.services.namespace import AccessContext, NamespaceService
from davserver.services.package_archive import (
    PackageArchive,
    PackageView,
    PinnedItem,
    build_archive,
    range_bounds,
)
from davserver.services.package_cache import PackageCache
from davserver.services.package_rows import LIVE_PACKAGES, folder_items, load_packages, pins_below
from davserver.services.permissions import Perm, require
from davserver.services.tree import NodeView, check_name, name_key
from davserver.services.zipstream import (
    MANIFEST_NAME,
    check_archive_path,
    check_unique_paths,
    safe_archive_name,
)

_CRC_BLOCK = 1024 * 1024


def check_package_name(name: str) -> str:
    """The stored form (NFC) of a package name; InvalidName when it cannot be one.

    A package name is a file name that does not end in ``.zip``: ``/packages/<name>.zip`` is
    the package's zip, next to its folder ``/packages/<name>/``.
    """
    name = name_key(check_name(name))
    if name.lower().endswith(".zip"):
        raise InvalidName(f"{name!r}: a package's zip is <name>.zip, so names cannot end in .zip")
    return name


class PackageService:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        namespace: NamespaceService,
        *,
        default_expiry_days: int = 0,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.namespace = namespace
        self.default_expiry_days = default_expiry_days
        self.cache = PackageCache()

    # ------------------------------------------------------------------ reads

    def list_packages(self, owner_id: uuid.UUID | None) -> list[PackageView]:
        """The live (unexpired) packages of a user, by name; every user's for None."""
        statement = LIVE_PACKAGES.order_by(_users.c.username, _p.c.name)
        if owner_id is not None:
            statement = statement.where(_p.c.created_by == owner_id)
        with self.db.connect() as conn:
            rows = conn.execute(statement, {"now": utcnow()}).all()
            return load_packages(conn, rows, self.cache)

    def find(self, owner_id: uuid.UUID, name: str) -> PackageView | None:
        """A user's live package by name, or None."""
        try:
            key = check_package_name(name)
        except InvalidName:
            return None
        with self.db.connect() as conn:
            rows = conn.execute(
                LIVE_PACKAGES.where(_p.c.created_by == owner_id, _p.c.name == key),
                {"now": utcnow()},
            ).all()
            found = load_packages(conn, rows, self.cache)
        return found[0] if found else None

    def get(self, owner_id: uuid.UUID, name: str) -> PackageView:
        """A user's live package by name; NotFound when there is none (or it expired)."""
        found = self.find(owner_id, name)
        if found is None:
            raise NotFound(f"no package {name!r}")
        return found

    def creator_context(self, owner_id: uuid.UUID) -> AccessContext:
        """The access context of a package's creator, for the command line (which acts for
        them: items are pinned and checked with the creator's own rights)."""
        return self.namespace.context_of_user(owner_id, "the package's creator no longer exists")

    # ---------------------------------------------------------------- changes

    def create(
        self,
        actor: Actor | None,
        owner_id: uuid.UUID,
        name: str,
        *,
        description: str = "",
        expires_days: int | None = None,
    ) -> PackageView:
        """A new, empty package of ``owner_id``.

        ``expires_days`` None takes the configured default; 0 means it never expires. A name
        held by an expired package of the same user is taken over (the old one is deleted).
        Raises InvalidName, BadRequest (a description ``check_description`` refuses), or
        Conflict when the user has a package of that name.
        """
        _require_write(actor)
        key = check_package_name(name)
        description = check_description(description)
        expires_at = _expires_at(self.default_expiry_days if expires_days is None else expires_days)
        try:
            with self.db.write() as session:
                self._insert(session, actor, owner_id, key, description, expires_at)
        except IntegrityError:  # a concurrent create of the same name won
            raise Conflict(f"there is a package {key!r} already") from None
        return self.get(owner_id, key)

    def update(
        self,
        actor: Actor | None,
        package: PackageView,
        *,
        name: str | None = None,
        description: str | None = None,
        expires_days: int | None = None,
    ) -> PackageView:
        """Rename a live package, or change its description and/or expiry (``expires_days``
        from now; 0: never). The logbook keeps what each was before. NotFound once it
        expired; Conflict when another live package of its creator has the new name (an
        expired one of that name is deleted, as by ``create``)."""
        _require_write(actor)
        changes: dict[str, Any] = {}
        key = check_package_name(name) if name is not None else package.name
        if key != package.name:
            changes["name"] = key
        if description is not None:
            changes["description"] = check_description(description)
        if expires_days is not None:
            changes["expires_at"] = _expires_at(expires_days)
        if not changes:
            raise BadRequest("nothing to change: give a new name, a description or an expiry")
        now = utcnow()
        try:
            with self.db.write() as session:
                row = self._lock_live(session, package, now)
                if "name" in changes:
                    self._claim_name(session, actor, package.created_by, changes["name"], now)
                session.execute(
                    sa.update(_p).where(_p.c.id == package.id).values(**changes, modified_at=now)
                )
                before = {key: getattr(row, key) for key in changes}
                record_audit(
                    session,
                    actor,
                    Op.PACKAGE_UPDATE,
                    package_id=package.id,
                    details=_details(
                        actor,
                        package.name,
                        package.id,
                        before=_shown(before),
                        after=_shown(changes),
                    ),
                )
        except IntegrityError:
            # A concurrent rename or create to the same name won: _claim_name's lock takes
            # no row that does not exist yet (PostgreSQL).
            if "name" not in changes:
                raise
            raise Conflict(f"there is a package {key!r} already") from None
        return self.get(package.created_by, changes.get("name", package.name))

    def _insert(
        self,
        session: Session,
        actor: Actor | None,
        owner_id: uuid.UUID,
        key: str,
        description: str,
        expires_at: dt.datetime | None,
    ) -> uuid.UUID:
        now = utcnow()
        self._claim_name(session, actor, owner_id, key, now)
        package_id = uuid.uuid4()
        session.execute(
            sa.insert(_p).values(
                id=package_id,
                name=key,
                description=description,
                created_by=owner_id,
                created_at=now,
                expires_at=expires_at,
                modified_at=now,
            )
        )
        record_audit(
            session,
            actor,
            Op.PACKAGE_CREATE,
            package_id=package_id,
            details=_details(actor, key, package_id, expires_at=_iso(expires_at)),
        )
        return package_id

    def add(
        self,
        actor: Actor | None,
        package: PackageView,
        ctx: AccessContext,
        node: NodeView,
        path: str | None = None,
        *,
        replace: bool = False,
    ) -> list[PinnedItem]:
        """Pin ``node`` (a file, or every live file below a folder) at ``path`` (default: its
        name); ``replace`` first unpins what is at or below ``path``. ``ctx`` is the creator's.

        Raises NotFound (the package or node is gone, or not readable), Forbidden (no
        DOWNLOAD), InvalidName (an unsafe or duplicate path), Conflict (nothing to pin).
        """
        _require_write(actor)
        _require_creator(ctx, package)
        rights = self.namespace.rights_on(ctx, [node.id])[node.id]
        require(rights, Perm.DOWNLOAD, "add to a package")
        # NFC, as most zip tools write names (macOS clients send NFD).
        prefix = check_archive_path(name_key(node.name if path is None else path))
        now = utcnow()

        def work(session: Session) -> list[str]:
            self._lock_live(session, package, now)
            pins = pins_below(session, node, prefix)
            existing = {
                row.path_in_archive: row.id
                for row in session.execute(
                    sa.select(_pi.c.id, _pi.c.path_in_archive).where(_pi.c.package_id == package.id)
                )
            }
            replaced = [pid for p, pid in existing.items() if _at_or_below(p, prefix)]
            kept = [p for p in existing if not (replace and _at_or_below(p, prefix))]
            new_paths = [pin["path_in_archive"] for pin in pins]
            _check_item_paths(kept, new_paths)
            if replace and replaced:
                session.execute(sa.delete(_pi).where(_pi.c.id.in_(replaced)))
            for pin in pins:
                pin.update(id=uuid.uuid4(), package_id=package.id, added_at=now)
            session.execute(sa.insert(_pi), pins)
            _items_changed(
                session,
                actor,
                package,
                now,
                Op.PACKAGE_ITEM_ADD,
                node_id=node.id,
                version_id=pins[0]["version_id"] if not node.is_folder else None,
                path=prefix,
                files=len(pins),
                replaced=len(replaced) if replace else 0,
                paths=new_paths[:100],
            )
            return new_paths

        # Again when PostgreSQL broke a deadlock with it: pins_below holds the files' rows,
        # and a MOVE onto one of them holds the other and waits for it.
        added = set(self.db.write_until_done(work))
        fresh = self.get(package.created_by, package.name)
        return [item for item in fresh.items if item.path in added]

    def remove(self, actor: Actor | None, package: PackageView, path: str) -> int:
        """Unpin the item at ``path``, or every item below it when it names a folder of the
        archive; the number unpinned. NotFound when nothing is there."""
        _require_write(actor)
        path = name_key(path.strip("/"))
        now = utcnow()
        with self.db.write() as session:
            _rows, at = self._items_at(session, package, path, now)
            ids = [row.id for row in at]
            session.execute(sa.delete(_pi).where(_pi.c.id.in_(ids)))
            _items_changed(
                session,
                actor,
                package,
                now,
                Op.PACKAGE_ITEM_REMOVE,
                **_one_file(at),
                path=path,
                files=len(ids),
            )
        return len(ids)

    def move(
        self,
        actor: Actor | None,
        package: PackageView,
        path: str,
        new_path: str,
        *,
        replace: bool = False,
    ) -> int:
        """Give the item at ``path`` (or every item below it, when it names a folder of the
        archive) the path ``new_path`` in the same package; ``replace`` first unpins what is
        at or below ``new_path``. The pinned versions stay; the number of items moved.

        Raises NotFound (nothing at ``path``), Conflict (a folder into itself), InvalidName
        (an unsafe path, the manifest's name, or one that collides with another item).
        """
        _require_write(actor)
        path = name_key(path.strip("/"))
        new_path = check_archive_path(name_key(new_path))
        if new_path != path and _at_or_below(new_path, path):
            raise Conflict(f"cannot move {path!r} into itself")
        now = utcnow()
        with self.db.write() as session:
            rows, at = self._items_at(session, package, path, now)
            moved = {row.id: new_path + row.path_in_archive[len(path) :] for row in at}
            stay = [row for row in rows if row.id not in moved]
            replaced = [r.id for r in stay if replace and _at_or_below(r.path_in_archive, new_path)]
            kept = [r.path_in_archive for r in stay if r.id not in replaced]
            _check_item_paths(kept, list(moved.values()))
            if replaced:
                session.execute(sa.delete(_pi).where(_pi.c.id.in_(replaced)))
            session.execute(
                sa.update(_pi)
                .where(_pi.c.id == sa.bindparam("b_id"))
                .values(path_in_archive=sa.bindparam("b_path")),
                [{"b_id": item_id, "b_path": moved_path} for item_id, moved_path in moved.items()],
            )
            _items_changed(
                session,
                actor,
                package,
                now,
                Op.PACKAGE_ITEM_MOVE,
                **_one_file(at),
                path=path,
                to=new_path,
                files=len(moved),
                replaced=len(replaced),
            )
        return len(moved)

    def delete(self, actor: Actor | None, package: PackageView) -> None:
        """Delete a package and unpin its items (the files themselves are untouched)."""
        _require_write(actor)
        with self.db.write() as session:
            self._lock_live(session, package, utcnow())
            self._delete_row(session, actor, package.id, package.name, reason="deleted")

    def purge_expired(self, actor: Actor | None = None) -> list[str]:
        """Delete every expired package (releasing its pinned versions); their names as
        ``owner:name``."""
        with self.db.write() as session:
            rows = session.execute(
                sa.select(_p.c.id, _p.c.name, _users.c.username)
                .join(_users, _users.c.id == _p.c.created_by)
                .where(_p.c.expires_at <= utcnow())
                .with_for_update(of=_p)
            ).all()
            for row in rows:
                self._delete_row(session, actor, row.id, row.name, reason="expired")
        return [f"{row.username}:{row.name}" for row in rows]

    def _claim_name(
        self, session: Session, actor: Actor | None, owner_id: uuid.UUID, key: str, now: dt.datetime
    ) -> None:
        """Make ``key`` free among ``owner_id``'s packages: Conflict when a live package has
        it; an expired one (kept until purged) is deleted."""
        old = session.execute(
            sa.select(_p.c.id, _p.c.expires_at)
            .where(_p.c.created_by == owner_id, _p.c.name == key)
            .with_for_update()
        ).first()
        if old is not None:
            if old.expires_at is None or old.expires_at > now:
                raise Conflict(f"there is a package {key!r} already")
            self._delete_row(session, actor, old.id, key, reason="expired")

    def _items_at(
        self, session: Session, package: PackageView, path: str, now: dt.datetime
    ) -> tuple[list[Any], list[Any]]:
        """Lock the live package (``_lock_live``); (all its items, those at or below
        ``path``), or NotFound when nothing is there."""
        self._lock_live(session, package, now)
        rows = list(
            session.execute(
                sa.select(_pi.c.id, _pi.c.path_in_archive, _pi.c.node_id, _pi.c.version_id).where(
                    _pi.c.package_id == package.id
                )
            )
        )
        at = [row for row in rows if path and _at_or_below(row.path_in_archive, path)]
        if not at:
            raise NotFound(f"nothing at {path!r} in package {package.name!r}")
        return rows, at

    def _lock_live(self, session: Session, package: PackageView, now: dt.datetime) -> Any:
        """Serialize changes to one package (PostgreSQL: its row; SQLite: the write lock);
        its row (name, description, expires_at), or NotFound when it was deleted or expired
        meanwhile."""
        row = session.execute(
            sa.select(_p.c.name, _p.c.description, _p.c.expires_at)
            .where(_p.c.id == package.id)
            .with_for_update()
        ).first()
        if row is None or (row.expires_at is not None and row.expires_at <= now):
            raise NotFound(f"no package {package.name!r}")
        return row

    def _delete_row(
        self, session: Session, actor: Actor | None, package_id: uuid.UUID, name: str, reason: str
    ) -> None:
        record_audit(
            session,
            actor,
            Op.PACKAGE_DELETE,
            package_id=package_id,
            details=_details(actor, name, package_id, reason=reason),
        )
        session.execute(sa.delete(_p).where(_p.c.id == package_id))

    # -------------------------------------------------------------- downloads

    def unavailable(self, ctx: AccessContext, package: PackageView) -> dict[str, str]:
        """The items the creator may no longer download: {path: why}."""
        _require_creator(ctx, package)
        rights = self.namespace.rights_on(
            ctx, [item.node_id for item in package.items if item.node_id is not None]
        )
        problems = {}
        for item in package.items:
            if item.node_id is None or not rights[item.node_id] & Perm.READ:
                problems[item.path] = "deleted, or no longer shared with you"
            elif not rights[item.node_id] & Perm.DOWNLOAD:
                problems[item.path] = "no download right"
        return problems

    def check_downloadable(self, ctx: AccessContext, package: PackageView) -> None:
        """Forbidden, naming them, when some items may no longer be downloaded."""
        problems = self.unavailable(ctx, package)
        if problems:
            shown = [f"{path} ({why})" for path, why in list(problems.items())[:10]]
            more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise Forbidden(
                f"package {package.name!r} holds items you may no longer download: "
                f"{', '.join(shown)}{more}; remove them from the package"
            )

    def check_item(self, ctx: AccessContext, package: PackageView, item: PinnedItem) -> None:
        """Forbidden (or NotFound) unless the creator may still download one item."""
        _require_creator(ctx, package)
        if item.node_id is None:
            raise Forbidden(f"{item.path}: its file was deleted")
        rights = self.namespace.rights_on(ctx, [item.node_id])[item.node_id]
        if not rights & Perm.READ:
            raise Forbidden(f"{item.path}: its file was deleted or is no longer shared with you")
        require(rights, Perm.DOWNLOAD, "download")

    def open_item(self, item: PinnedItem) -> BinaryIO:
        """A seekable reader of one pinned version's bytes; NotFound when they are missing."""
        return open_stored(self.blobs, item.storage_key, item.path, item.size)

    def check_item_bytes(self, item: PinnedItem) -> None:
        """What ``open_item`` would raise, without opening the bytes: NotFound when they are
        missing (a HEAD answers what a GET would)."""
        require_stored(self.blobs, item.storage_key, item.path, item.size)

    def check_zip_bytes(self, package: PackageView, *, folder: bool = False) -> None:
        """What ``download`` (``download_folder`` with ``folder``) would raise for bytes the
        blob store lost, without reading them or logging a download: a HEAD answers what a
        GET would."""
        self._require_bytes(package.items, _zip_of(package, folder=folder))

    def download_item(
        self,
        actor: Actor,
        package: PackageView,
        item: PinnedItem,
        *,
        served_range: str | None = None,
    ) -> BinaryIO:
        """One pinned item's bytes (``open_item``), its download logged
        as the file's, with the package's name (``served_range``: the range sent, if any).
        The row is written within a second, as a file's GET is (``ReadLog``)."""
        content = self.open_item(item)
        details = _details(
            actor,
            package.name,
            package.id,
            path=item.path,
            size=item.size,
            version_no=item.version_no,
        )
        if served_range is not None:
            details["range"] = served_range[:200]
        self.namespace.files.read_log.add(
            actor,
            Op.FILE_DOWNLOAD,
            node_id=item.node_id,
            version_id=item.version_id,
            package_id=package.id,
            details=details,
        )
        return content

    def _open(self, storage_key: str | None) -> BinaryIO:
        return io.BytesIO(b"") if storage_key is None else self.blobs.open(storage_key)

    def layout(self, package: PackageView) -> PackageArchive:
        """The zip's size and ETag (for HEAD and listings; its bytes are not for reading).
        Laid out once for a package the cache holds."""
        return self.cache.archive(package, lambda: build_archive(package, self._open))

    def download(
        self,
        ctx: AccessContext,
        package: PackageView,
        *,
        byte_range: str | None = None,
        laid_out: PackageArchive | None = None,
        checked: bool = False,
    ) -> PackageArchive:
        """The zip, ready to be read: checks every item, computes missing CRC-32s, and logs
        the download (``byte_range`` is the Range header, if any) as a file's GET is: in
        the batches of ``ReadLog``, so that reading needs no room in the database.

        ``laid_out``: this package's ``layout``, used again when no CRC-32 was missing (a
        request that sent its size and ETag need not lay out a large zip twice). ``checked``:
        the caller ran ``check_downloadable`` for ``ctx`` in this request already (the
        rights of every item are one query over all their ancestors)."""
        if not checked:
            self.check_downloadable(ctx, package)
        archive = self._readable(package, _zip_of(package, folder=False), laid_out, byte_range)
        self.namespace.files.read_log.add(
            ctx.actor,
            Op.PACKAGE_DOWNLOAD,
            package_id=package.id,
            details=_details(
                ctx.actor,
                package.name,
                package.id,
                etag=archive.etag,
                size=archive.size,
                files=len(package.items),
                range=byte_range,
            ),
        )
        return archive

    def of_folder(self, ctx: AccessContext, node: NodeView, rights: Perm) -> PackageView:
        """Folder ``node``'s live files as a package that is never stored: each current
        version under the folder's name (a space's root has none: its group's, or its
        owner's), for ``GET <folder>?zip``. Needs DOWNLOAD on the folder (grants reach
        everything below it)."""
        require(rights, Perm.DOWNLOAD, "download")
        with self.db.read() as session:
            name: str | None = node.name
            if not name and node.group_id is not None:  # a group space's root: the group's
                name = session.scalar(
                    sa.select(_groups.c.name).where(_groups.c.id == node.group_id)
                )
            elif not name:  # a home's root: its owner's (an admin's /users/<name>/ too)
                name = session.scalar(
                    sa.select(_users.c.username).where(_users.c.id == node.owner_id)
                )
            name = safe_archive_name(name_key(name or "files"), first=True)
            if _fold(name) == _fold(MANIFEST_NAME):  # the manifest lies beside it, at the top
                name = "_" + name
            items = folder_items(session, node, name, node.modified_at)
        return PackageView(
            id=node.id,
            name=name,
            description="",
            created_by=ctx.actor.user_id,
            owner=ctx.actor.username,
            created_at=node.created_at,
            expires_at=None,
            modified_at=max((item.mtime for item in items), default=node.modified_at),
            items=tuple(items),
        )

    def download_folder(
        self,
        ctx: AccessContext,
        folder: PackageView,
        *,
        byte_range: str | None = None,
        laid_out: PackageArchive | None = None,
    ) -> PackageArchive:
        """``of_folder``'s zip, ready to be read; logged as the folder's download.
        ``laid_out`` as for ``download``."""
        archive = self._readable(folder, _zip_of(folder, folder=True), laid_out, byte_range)
        self.namespace.files.read_log.add(
            ctx.actor,
            Op.FOLDER_DOWNLOAD,
            node_id=folder.id,
            details={
                "name": folder.name,
                "etag": archive.etag,
                "size": archive.size,
                "files": len(folder.items),
                "range": byte_range,
            },
        )
        return archive

    def _readable(
        self,
        package: PackageView,
        where: str,
        laid_out: PackageArchive | None = None,
        byte_range: str | None = None,
    ) -> PackageArchive:
        """The zip of ``package`` with its bytes: missing CRC-32s computed, and the blob of
        each item the answer reads checked (``lost_bytes`` names those gone, ``where``):
        every item's for the whole zip, those ``byte_range`` (the Range header served)
        overlaps for a part. ``laid_out`` (the ``layout`` of ``package``) is used again."""
        archive = laid_out if laid_out is not None and laid_out.package is package else None
        archive = archive or self.layout(package)
        read = archive.stream.reading(*range_bounds(byte_range, archive.size))
        self._require_bytes([package.items[i] for i in read if i < len(package.items)], where)
        ready = self._with_crc32(package)
        if ready is package:
            return archive
        self.cache.replace(package, ready)
        return self.layout(ready)

    def _require_bytes(self, items: Sequence[PinnedItem], where: str) -> None:
        """NotFound naming the ``items`` whose bytes the blob store lost (``lost_bytes``),
        else the first it holds cut short (``damaged_bytes``), so that the answer is an error,
        not a zip that breaks off at the first of them."""
        keys = sorted({item.storage_key for item in items if item.storage_key})
        held = dict(zip(keys, self.blobs.sizes_of(keys), strict=True))
        stored = [(item, held[item.storage_key]) for item in items if item.storage_key]
        lost = [item for item, size in stored if size is None]
        if lost:
            paths = ", ".join(item.path for item in lost[:10])
            more = f" and {len(lost) - 10} more" if len(lost) > 10 else ""
            raise lost_bytes(f"{paths}{more} in {where}", [item.storage_key for item in lost])
        for item, size in stored:
            if size is not None and size != item.size and item.storage_key:
                raise damaged_bytes(f"{item.path} in {where}", item.storage_key, size, item.size)

    def _with_crc32(self, package: PackageView) -> PackageView:
        """``package`` with every item's CRC-32, reading (once, then stored) the blobs of
        those uploaded before CRC-32s were recorded at upload."""
        missing = {
            item.blob_id: item.storage_key
            for item in package.items
            if item.crc32 is None and item.blob_id is not None and item.storage_key is not None
        }
        if not missing:
            return package
        computed: dict[uuid.UUID, int] = {}
        for blob_id, storage_key in missing.items():
            crc = 0
            try:
                with self.blobs.open(storage_key) as fh:
                    while block := fh.read(_CRC_BLOCK):
                        crc = zlib.crc32(block, crc)
            except FileNotFoundError as exc:
                raise NotFound("a pinned file's bytes are missing from the blob store") from exc
            computed[blob_id] = crc
        with self.db.write() as session:
            for blob_id, crc in computed.items():
                session.execute(
                    sa.update(_b).where(_b.c.id == blob_id, _b.c.crc32.is_(None)).values(crc32=crc)
                )
        items = tuple(
            dataclasses.replace(item, crc32=computed[item.blob_id])
            if item.blob_id is not None and item.blob_id in computed
            else item
            for item in package.items
        )
        return dataclasses.replace(package, items=items)


# ---------------------------------------------------------------------- helpers


def _require_write(actor: Actor | None) -> None:
    if actor is not None:
        actor.require_write()


def _require_creator(ctx: AccessContext, package: PackageView) -> None:
    if ctx.actor.user_id != package.created_by:
        raise NotFound(f"no package {package.name!r}")


def _items_changed(
    session: Session,
    actor: Actor | None,
    package: PackageView,
    now: dt.datetime,
    op: Op,
    *,
    node_id: uuid.UUID | None = None,
    version_id: uuid.UUID | None = None,
    **details: Any,
) -> None:
    """After items were added, removed or moved: the package changed ``now`` (its zip's
    Last-Modified), and the logbook row of ``op``."""
    session.execute(sa.update(_p).where(_p.c.id == package.id).values(modified_at=now))
    record_audit(
        session,
        actor,
        op,
        node_id=node_id,
        version_id=version_id,
        package_id=package.id,
        details=_details(actor, package.name, package.id, **details),
    )


def _one_file(items: list[Any]) -> dict[str, uuid.UUID | None]:
    """The file and version a logbook row about ``items`` names: the item's when there is
    one, none when there are several (a folder of the archive)."""
    if len(items) != 1:
        return {}
    return {"node_id": items[0].node_id, "version_id": items[0].version_id}


# What package_items.path_in_archive holds (String(1024)): PostgreSQL refused a longer one
# with a 500, and SQLite kept it, for db copy to fail on.
MAX_ITEM_PATH = 1024


def _check_item_paths(kept: list[str], new_paths: list[str]) -> None:
    """InvalidName unless ``new_paths`` are safe archive paths, none the manifest's, that
    collide with neither each other nor the ``kept`` items (letter case aside)."""
    for new_path in new_paths:
        check_archive_path(new_path)
        if len(new_path) > MAX_ITEM_PATH:
            raise InvalidName(
                f"{new_path[:80]!r}...: a package item's path is at most {MAX_ITEM_PATH} characters"
            )
        top = new_path.split("/", 1)[0]  # a folder pinned under it holds it as its first part
        if _fold(top) == _fold(MANIFEST_NAME):
            raise InvalidName(f"{top!r} is the name of the package's manifest")
    check_unique_paths([*kept, *new_paths])


def _at_or_below(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _fold(path: str) -> str:
    return name_key(path).casefold()


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _expires_at(days: int) -> dt.datetime | None:
    """When a package given ``days`` from now expires; None for 0 (never). BadRequest for a
    number of days that is negative or past ``bounds.MAX_DAYS``."""
    return days_from_now(check_days(days, at_least=0, what="a package's expiry in days (0: never)"))


def _shown(fields: dict[str, Any]) -> dict[str, Any]:
    """Package fields as the logbook shows them (dates as ISO text)."""
    return {k: _iso(v) if isinstance(v, dt.datetime) else v for k, v in fields.items()}


def _details(actor: Actor | None, name: str, package_id: uuid.UUID, **extra: Any) -> dict[str, Any]:
    details = {"package": name, "package_id": str(package_id), **extra}
    if actor is None:
        details["via"] = "cli"
    return details


_p = Base.metadata.tables["packages"]
_pi = Base.metadata.tables["package_items"]
_b = Base.metadata.tables["blobs"]
_users = Base.metadata.tables["users"]
_groups = Base.metadata.tables["groups"]


def _zip_of(package: PackageView, *, folder: bool) -> str:
    """How an error names the zip of a package, or of a folder (``?zip``)."""
    return f"folder {package.name!r}" if folder else f"package {package.name!r}"
