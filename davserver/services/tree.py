"""Reading the tree: names, path resolution and folder listings, each in one query.

A path is resolved with one SELECT that joins one alias of ``nodes`` per path segment, from the
space's root down; every segment must be live (not deleted) and every ancestor a folder. SQLite
allows 64 tables in a join, so deeper paths are resolved in slices of ``_SLICE`` segments.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from davserver.errors import InvalidName
from davserver.models import Blob, FileVersion, Node, NodeKind, Space

MAX_NAME_LENGTH = 255
_SLICE = 30
_FORBIDDEN_CHARS = frozenset("/\0")


def name_key(name: str) -> str:
    """The lookup key of a name: its NFC form, so NFD names (macOS) find NFC ones."""
    return unicodedata.normalize("NFC", name)


def check_name(name: str) -> str:
    """Return ``name`` if it can be stored as a file or folder name, else raise InvalidName."""
    if name in ("", ".", ".."):
        raise InvalidName(f"{name!r} is not a valid name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"names are at most {MAX_NAME_LENGTH} characters")
    if any(ch in _FORBIDDEN_CHARS for ch in name):
        raise InvalidName("names may not contain '/' or NUL")
    if any(unicodedata.category(ch) == "Cs" for ch in name):
        raise InvalidName("names must be valid Unicode")
    return name


@dataclass(frozen=True, slots=True)
class NodeView:
    """A snapshot of one node and its current version, as read in one query."""

    id: uuid.UUID
    parent_id: uuid.UUID | None
    name: str
    kind: str
    owner_id: uuid.UUID
    size: int
    mtime: dt.datetime | None
    created_at: dt.datetime
    modified_at: dt.datetime
    mime_type: str | None
    current_version_id: uuid.UUID | None
    version_no: int | None
    sha256: str | None
    md5: str | None
    sha1: str | None
    storage_key: str | None

    @property
    def is_folder(self) -> bool:
        return self.kind == NodeKind.FOLDER

    @property
    def last_modified(self) -> dt.datetime:
        """The client's modification time when it gave one, else the server's."""
        return self.mtime or self.modified_at


_VIEW_COLUMNS = (
    "id",
    "parent_id",
    "name",
    "kind",
    "owner_id",
    "size",
    "mtime",
    "created_at",
    "modified_at",
    "mime_type",
    "current_version_id",
)


def _view_select(node: type[Node] | sa.orm.util.AliasedClass[Node]) -> sa.Select[tuple]:
    columns = [getattr(node, c) for c in _VIEW_COLUMNS]
    return (
        sa.select(
            *columns, FileVersion.version_no, Blob.sha256, Blob.md5, Blob.sha1, Blob.storage_key
        )
        .outerjoin(FileVersion, FileVersion.id == node.current_version_id)
        .outerjoin(Blob, Blob.id == FileVersion.blob_id)
    )


def _to_view(row: sa.Row[tuple]) -> NodeView:
    return NodeView(*row)  # type: ignore[arg-type, call-arg]


def home_root(session: Session, owner_id: uuid.UUID) -> NodeView | None:
    stmt = _view_select(Node).where(
        Node.owner_id == owner_id,
        Node.parent_id.is_(None),
        Node.space == Space.HOME,
        Node.deleted_at.is_(None),
    )
    row = session.execute(stmt).first()
    return _to_view(row) if row else None


def get_node(session: Session, node_id: uuid.UUID) -> NodeView | None:
    row = session.execute(_view_select(Node).where(Node.id == node_id)).first()
    return _to_view(row) if row else None


def resolve(session: Session, root_id: uuid.UUID, parts: Sequence[str]) -> NodeView | None:
    """The live node at ``parts`` below the folder ``root_id``, or None."""
    if not parts:
        return get_node(session, root_id)
    current = root_id
    view: NodeView | None = None
    for start in range(0, len(parts), _SLICE):
        view = _resolve_slice(session, current, parts[start : start + _SLICE])
        if view is None:
            return None
        if start + _SLICE < len(parts) and not view.is_folder:
            return None
        current = view.id
    return view


def _resolve_slice(session: Session, root_id: uuid.UUID, parts: Sequence[str]) -> NodeView | None:
    aliases = [aliased(Node, name=f"n{i}") for i in range(len(parts))]
    last = aliases[-1]
    stmt = _view_select(last)
    previous_id: Any = root_id
    conditions: list[sa.ColumnElement[bool]] = []
    for i, (alias, part) in enumerate(zip(aliases, parts, strict=True)):
        conditions += [
            alias.parent_id == previous_id,
            alias.name_key == name_key(part),
            alias.deleted_at.is_(None),
        ]
        if i < len(parts) - 1:
            conditions.append(alias.kind == NodeKind.FOLDER)
        previous_id = alias.id
    # The joins are written as WHERE conditions over a FROM list; both engines plan them as
    # index lookups on (parent_id, name_key).
    stmt = stmt.where(*conditions)
    row = session.execute(stmt).first()
    return _to_view(row) if row else None


def list_children(session: Session, folder_id: uuid.UUID) -> list[NodeView]:
    """Every live child of a folder, with its current version, in one query."""
    stmt = (
        _view_select(Node)
        .where(Node.parent_id == folder_id, Node.deleted_at.is_(None))
        .order_by(Node.name)
    )
    return [_to_view(row) for row in session.execute(stmt)]


def child_by_name(session: Session, folder_id: uuid.UUID, name: str) -> NodeView | None:
    stmt = _view_select(Node).where(
        Node.parent_id == folder_id,
        Node.name_key == name_key(name),
        Node.deleted_at.is_(None),
    )
    row = session.execute(stmt).first()
    return _to_view(row) if row else None


def is_descendant(session: Session, node_id: uuid.UUID, ancestor_id: uuid.UUID) -> bool:
    """True when ``node_id`` is ``ancestor_id`` or lies below it."""
    chain = (
        sa.select(Node.id, Node.parent_id).where(Node.id == node_id).cte("chain", recursive=True)
    )
    chain = chain.union_all(
        sa.select(Node.id, Node.parent_id).join(chain, Node.id == chain.c.parent_id)
    )
    found = session.execute(sa.select(chain.c.id).where(chain.c.id == ancestor_id)).first()
    return found is not None
