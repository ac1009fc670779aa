"""Reading the tree: names, path resolution and folder listings, each in one query.

A path is resolved with one SELECT that joins one alias of ``nodes`` per path segment, from the
space's root down; every segment must be live (not deleted) and every ancestor a folder. SQLite
allows 64 tables in a join, so deeper paths are resolved in slices of ``_SLICE`` segments.
"""

from __future__ import annotations

import datetime as dt
import functools
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base
from davserver.db.dialect import by_dialect, for_bind, is_postgres, join_by_key, unnested
from davserver.errors import Conflict, InvalidName
from davserver.models import NodeKind, Space

MAX_NAME_LENGTH = 255
_SLICE = 20  # SQLite joins at most 64 tables; a slice uses 23
# "/" separates names; control characters and the noncharacters U+FFFE and U+FFFF cannot
# appear in the XML of a PROPFIND answer (XML 1.0 "Char"): one such name would make every
# listing of its folder unreadable. Windows refuses control characters in file names too.
_FORBIDDEN_CHARS = frozenset("/\x7f\ufffe\uffff") | frozenset(chr(c) for c in range(32))


def name_key(name: str) -> str:
    """The lookup key of a name: its NFC form, so NFD names (macOS) find NFC ones."""
    return unicodedata.normalize("NFC", name)


def is_client_metadata(name: str) -> bool:
    """Files that desktops write beside the user's own (Finder's AppleDouble ``._*`` and
    ``.DS_Store``, Explorer's ``Thumbs.db``): stored, but their history is not worth keeping."""
    return name.startswith("._") or name in (".DS_Store", "Thumbs.db")


def check_name(name: str) -> str:
    """Return ``name`` if it can be stored as a file or folder name, else raise InvalidName."""
    if name in ("", ".", ".."):
        raise InvalidName(f"{name!r} is not a valid name")
    if len(name) > MAX_NAME_LENGTH and len(name_key(name)) > MAX_NAME_LENGTH:
        # As long as its composed form, by which it is found: macOS sends names decomposed.
        raise InvalidName(f"names are at most {MAX_NAME_LENGTH} characters")
    if any(ch in _FORBIDDEN_CHARS for ch in name):
        raise InvalidName("names may not contain '/', control characters, U+FFFE or U+FFFF")
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
    group_id: uuid.UUID | None  # set in a group's space
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
    "group_id",
    "size",
    "mtime",
    "created_at",
    "modified_at",
    "mime_type",
    "current_version_id",
)
_nodes = Base.metadata.tables["nodes"]
_versions = Base.metadata.tables["file_versions"]
_blobs = Base.metadata.tables["blobs"]


_VERSION_COLUMNS = (
    _versions.c.version_no,
    _blobs.c.sha256,
    _blobs.c.md5,
    _blobs.c.sha1,
    _blobs.c.storage_key,
)


def _with_current_version(from_: Any, node: Any) -> Any:
    """``from_`` outer-joined to the current version of ``node`` and that version's blob."""
    return from_.outerjoin(_versions, _versions.c.id == node.c.current_version_id).outerjoin(
        _blobs, _blobs.c.id == _versions.c.blob_id
    )


def _view_select(node: Any) -> sa.Select[Any]:
    """SELECT the NodeView columns of ``node`` (the table or an alias of it)."""
    return sa.select(*(node.c[c] for c in _VIEW_COLUMNS), *_VERSION_COLUMNS).select_from(
        _with_current_version(node, node)
    )


def _to_view(row: sa.Row[Any]) -> NodeView:
    return NodeView(*row)  # type: ignore[call-arg]


# Statements are built once (per path depth) with bind parameters, so a request pays neither
# for constructing them nor, thanks to SQLAlchemy's compiled cache, for compiling them.


def _space_roots(space: Space) -> sa.Select[Any]:
    """The live root folders of the spaces of one kind."""
    return _view_select(_nodes).where(
        _nodes.c.parent_id.is_(None),
        _nodes.c.space == space.value,
        _nodes.c.deleted_at.is_(None),
    )


_HOME_ROOTS = _space_roots(Space.HOME)
_HOME_ROOT = _HOME_ROOTS.where(_nodes.c.owner_id == sa.bindparam("owner_id", type_=sa.Uuid))
_GROUP_ROOTS = _space_roots(Space.GROUP)
_BY_ID = _view_select(_nodes).where(_nodes.c.id == sa.bindparam("node_id", type_=sa.Uuid))
# PostgreSQL grants a row's share lock to every transaction asking for it while others hold it,
# whoever waits for the row meanwhile: a MOVE or DELETE of a folder waits for the uploads
# holding it (``hold_chain``) to end, and with a few clients uploading into the folder new
# holds came before the old ones ended, for as long as the uploads went on (a COPY of a busy
# folder waited a minute). Its advisory locks queue fairly: a transaction first takes its turn
# at the node, shared to hold it, exclusive to lock it for a change, and a turn asked for after
# a waiting exclusive one waits behind it.
_TURNS = 0x6E6F6465  # the key space of these advisory locks ("node")


def turn(node_id: Any, *, shared: bool) -> sa.ColumnElement[bool]:
    """PostgreSQL only: an always-true condition that takes, until the transaction ends, the
    turn at the node ``node_id`` (a column or a parameter), shared or exclusive."""
    take = sa.func.pg_advisory_xact_lock_shared if shared else sa.func.pg_advisory_xact_lock
    return take(_TURNS, sa.func.hashtext(sa.cast(node_id, sa.Text))).is_not(None)


def take_turn(session: Session, node_id: uuid.UUID) -> None:
    """Take the exclusive turn at ``node_id`` (see ``turn``) before locking its row to move,
    rename or trash it; nothing on SQLite, whose writers are serialized."""
    if is_postgres(session):
        session.execute(_TAKE_TURN, {"node_id": node_id})


# Serializes writers to one name on PostgreSQL; SQLite renders no FOR UPDATE (its BEGIN
# IMMEDIATE already serializes writers). FOR NO KEY UPDATE (see node_rows.live_node), after the
# child's exclusive turn (``turn``), taken inside a CASE: on the child alone, whatever the plan.
def _child_for_update(postgres: bool) -> sa.Select[Any]:
    found = sa.and_(
        _nodes.c.parent_id == sa.bindparam("parent_id", type_=sa.Uuid),
        _nodes.c.name_key == sa.bindparam("key"),
        _nodes.c.deleted_at.is_(None),
    )
    select = _view_select(_nodes).where(found)
    if postgres:
        select = select.where(sa.case((found, turn(_nodes.c.id, shared=False)), else_=False))
    return select.with_for_update(of=_nodes, key_share=True)


_CHILD_FOR_UPDATE = by_dialect(_child_for_update)
_TAKE_TURN = sa.select(turn(sa.bindparam("node_id", type_=sa.Uuid), shared=False))
# A child's parent, owner and group are its folder's (every writer keeps them so): a listing
# reads the other columns only, in NodeView's order (id, name, kind, size, ...), which spares
# three UUID conversions per member.
_CHILD_COLUMNS = tuple(c for c in _VIEW_COLUMNS if c not in ("parent_id", "owner_id", "group_id"))
_CHILDREN = (
    sa.select(*(_nodes.c[c] for c in _CHILD_COLUMNS), *_VERSION_COLUMNS)
    .select_from(_with_current_version(_nodes, _nodes))
    .where(
        _nodes.c.parent_id == sa.bindparam("parent_id", type_=sa.Uuid),
        _nodes.c.deleted_at.is_(None),
    )
    .order_by(_nodes.c.name)
)


def home_root(session: Session | sa.Connection, owner_id: uuid.UUID) -> NodeView | None:
    row = session.execute(_HOME_ROOT, {"owner_id": owner_id}).first()
    return _to_view(row) if row else None


def home_roots(session: Session | sa.Connection) -> dict[uuid.UUID, NodeView]:
    """Every user's home root that exists, by its owner's id (one statement)."""
    return {view.owner_id: view for view in map(_to_view, session.execute(_HOME_ROOTS))}


def group_roots(session: Session | sa.Connection) -> dict[uuid.UUID, NodeView]:
    """Every group space's root that exists, by its group's id (one statement)."""
    found = map(_to_view, session.execute(_GROUP_ROOTS))
    return {view.group_id: view for view in found if view.group_id is not None}


def get_node(session: Session | sa.Connection, node_id: uuid.UUID) -> NodeView | None:
    row = session.execute(_BY_ID, {"node_id": node_id}).first()
    return _to_view(row) if row else None


def child_for_update(session: Session, parent_id: uuid.UUID, key: str) -> NodeView | None:
    """The live child of ``parent_id`` whose name has the ``name_key`` ``key``, locked for the
    rest of the caller's write transaction; None when there is none."""
    statement = for_bind(_CHILD_FOR_UPDATE, session)
    row = session.execute(statement, {"parent_id": parent_id, "key": key}).first()
    return _to_view(row) if row else None


def get_nodes(
    session: Session | sa.Connection, node_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, NodeView]:
    """Many nodes by id, live or deleted, in one query per 5,000 (SQLite's parameter limit)."""
    found: dict[uuid.UUID, NodeView] = {}
    for start in range(0, len(node_ids), 5000):
        batch = list(node_ids[start : start + 5000])
        for row in session.execute(for_bind(_BY_IDS, session), {"node_ids": batch}):
            view = _to_view(row)
            found[view.id] = view
    return found


def one_row(
    columns: Sequence[str], *where: sa.ColumnElement[bool], hold: bool = False
) -> sa.Select[Any]:
    """The ``columns`` of the one node ``where`` picks by a unique key (parameters, or
    columns of an outer query: then a LATERAL subquery), share-locked with ``hold``.

    LIMIT 1 keeps PostgreSQL from merging the subquery into the outer query, and the outer
    query's conditions into it. Merged into a join, the lookup may be planned as a scan of
    the table. Merged with ``deleted_at IS NULL`` (a condition to check on the row found),
    a lookup by id may be planned as a scan of the live-name index, which is partial on that
    condition. Such a plan can be made while the table is small, and is kept once psycopg
    prepares the statement."""
    select = sa.select(*(_nodes.c[c] for c in columns)).where(*where).limit(1)
    return select.with_for_update(read=True) if hold else select


def walk_step(
    walk: Any, columns: Sequence[str], *, up: bool, postgres: bool, live: bool = True
) -> tuple[Any, Any]:
    """The recursive part of a walk through the tree: ``walk`` (a recursive CTE, or an alias
    of it) joined to the nodes one step from each of its rows, and those nodes (``.c``, with
    ``columns``). Up: the parent of each row (by its ``parent_id``). Down: the children of
    each row (by its ``id``), only the live ones with ``live``.

    On PostgreSQL each step is a LATERAL lookup by key (LIMIT 1 up; OFFSET 0 down keeps it
    from being merged into a join). As a join, the planner guesses a walk's size at 101 rows
    per level and hash-joins it with a scan of all nodes, or of the live-name index, at every
    level; and a plan made while the table was small is kept once psycopg prepares the
    statement. SQLite looks each step up by key anyway."""
    if up:
        on = _nodes.c.id == walk.c.parent_id
    else:
        on = _nodes.c.parent_id == walk.c.id
        if live:
            on = sa.and_(on, _nodes.c.deleted_at.is_(None))
    name = "next_up" if up else "next_down"
    return join_by_key(walk, _nodes, on, columns, name, one=up, postgres=postgres)


def walk_down(columns: Sequence[str], name: str, *, postgres: bool) -> sa.CTE:
    """``:root_id`` and its live descendants, parents before children: a recursive CTE of
    their ``columns`` (``kind`` among them) and their ``depth`` below the root (0 for it). Each
    level is looked up from the folders of the one above (``walk_step``)."""
    top = sa.select(*(_nodes.c[c] for c in columns), sa.literal(0).label("depth"))
    walk = top.where(_nodes.c.id == sa.bindparam("root_id", type_=sa.Uuid)).cte(name, True)
    steps, child = walk_step(walk, columns, up=False, postgres=postgres)
    return walk.union_all(
        sa.select(*(child.c[c] for c in columns), (walk.c.depth + 1).label("depth"))
        .select_from(steps)
        .where(walk.c.kind == NodeKind.FOLDER.value)
    )


def _by_ids(postgres: bool) -> sa.Select[Any]:
    """The NodeView rows of the nodes whose ids are in :node_ids. On PostgreSQL each id is
    looked up by key (``one_row``) from the array of them: as an IN list, a plan made while the
    table was small was a scan of it, and stayed one."""
    if not postgres:
        ids = sa.bindparam("node_ids", expanding=True, type_=sa.Uuid)
        return _view_select(_nodes).where(_nodes.c.id.in_(ids))
    wanted = unnested("node_ids", sa.Uuid)
    node = one_row(_VIEW_COLUMNS, _nodes.c.id == wanted.c.value).lateral("node")
    return sa.select(*(node.c[c] for c in _VIEW_COLUMNS), *_VERSION_COLUMNS).select_from(
        _with_current_version(wanted.join(node, sa.true()), node)
    )


_BY_IDS = by_dialect(_by_ids)
_path_statements: dict[tuple[int, bool], sa.Select[Any]] = {}
_NODE_WIDTH = len(_VIEW_COLUMNS)


def _path_statement(depth: int, *, postgres: bool) -> sa.Select[Any]:
    """The lookup of the folder ``root_id`` and ``depth`` path segments below it, with every
    prefix, in one statement.

    One alias of ``nodes`` per segment, each LEFT JOINed to the one before (which must be a
    folder), so the row also tells where a missing path stops: the parent of a new file comes
    with the lookup of the file, and the root comes too. Version and blob columns are joined
    for the last segment only. On PostgreSQL each segment is a LATERAL lookup of (parent, name)
    in the name index: as a plain join, a plan made while the table was small (and kept, once
    psycopg prepared the statement) looked every segment past the first up by name alone, in
    every folder.
    """
    cached = _path_statements.get((depth, postgres))
    if cached is not None:
        return cached
    root = _nodes.alias("r")
    segments: list[Any] = []
    joined: Any = root
    for i in range(depth):
        previous = segments[-1] if segments else root
        if postgres:
            where = _segment_conditions(_nodes, previous, i)
            segment: Any = one_row(_VIEW_COLUMNS, *where).lateral(f"n{i}")
            joined = joined.outerjoin(segment, sa.true())
        else:
            segment = _nodes.alias(f"n{i}")
            joined = joined.outerjoin(segment, sa.and_(*_segment_conditions(segment, previous, i)))
        segments.append(segment)
    joined = _with_current_version(joined, segments[-1])
    columns: list[Any] = [node.c[c] for node in (root, *segments) for c in _VIEW_COLUMNS]
    stmt: sa.Select[Any] = (
        sa.select(*columns, *_VERSION_COLUMNS)
        .select_from(joined)
        .where(root.c.id == sa.bindparam("root_id", type_=sa.Uuid))
    )
    _path_statements[(depth, postgres)] = stmt
    return stmt


def _segment_conditions(node: Any, previous: Any, i: int) -> list[sa.ColumnElement[bool]]:
    """``node`` is the live child named by the ``k{i}`` parameter of the folder ``previous``."""
    return [
        node.c.parent_id == previous.c.id,
        previous.c.kind == NodeKind.FOLDER.value,
        node.c.name_key == sa.bindparam(f"k{i}"),
        node.c.deleted_at.is_(None),
    ]


def resolve_chain(
    conn: Session | sa.Connection, root_id: uuid.UUID, parts: Sequence[str]
) -> list[NodeView | None]:
    """The live node at every prefix of ``parts`` below folder ``root_id``; None where missing.

    Entries before the last are given only when they are folders (only folders can be parents;
    a file met midway ends the path).
    """
    return resolve_from(conn, root_id, parts)[1:]


def resolve_from(
    conn: Session | sa.Connection, root_id: uuid.UUID, parts: Sequence[str]
) -> list[NodeView | None]:
    """``root_id`` itself (None when it does not exist), then ``resolve_chain``: one statement
    for paths of up to _SLICE segments."""
    if not parts:
        return [get_node(conn, root_id)]
    result: list[NodeView | None] = [None] * (len(parts) + 1)
    current = root_id
    postgres = is_postgres(conn)
    for start in range(0, len(parts), _SLICE):
        chunk = parts[start : start + _SLICE]
        params: dict[str, Any] = {f"k{i}": name_key(part) for i, part in enumerate(chunk)}
        params["root_id"] = current
        row = conn.execute(_path_statement(len(chunk), postgres=postgres), params).first()
        if row is None:
            return result
        tail = tuple(row[(len(chunk) + 1) * _NODE_WIDTH :])
        if start == 0:
            root = NodeView(*row[:_NODE_WIDTH], *(None,) * len(tail))
            # A file has no children; its own view needs its version (a rare path).
            result[0] = root if root.is_folder else get_node(conn, root_id)
        for i in range(len(chunk)):
            offset = (i + 1) * _NODE_WIDTH
            cells = tuple(row[offset : offset + _NODE_WIDTH])
            if cells[0] is None:
                return result
            is_last = i == len(chunk) - 1
            view = NodeView(*cells, *(tail if is_last else (None,) * len(tail)))
            if not is_last and not view.is_folder:
                return result
            result[start + i + 1] = view
        last = result[start + len(chunk)]
        if last is None or not last.is_folder:
            return result
        current = last.id
    return result


def resolve(
    conn: Session | sa.Connection, root_id: uuid.UUID, parts: Sequence[str]
) -> NodeView | None:
    """The live node at ``parts`` below the folder ``root_id``, or None."""
    if not parts:
        return get_node(conn, root_id)
    return resolve_chain(conn, root_id, parts)[-1]


def list_children(session: Session | sa.Connection, folder: NodeView) -> list[NodeView]:
    """Every live child of a folder, with its current version, in one query."""
    parent_id, owner_id, group_id = folder.id, folder.owner_id, folder.group_id
    return [
        NodeView(node_id, parent_id, name, kind, owner_id, group_id, *rest)
        for node_id, name, kind, *rest in session.execute(_CHILDREN, {"parent_id": parent_id}).all()
    ]


class FolderGone(Conflict):
    """``hold_chain``'s folder, or one above it, is in the trash or gone: a Conflict for
    what would be made in it, a NotFound for what was in it (``node_rows.held_node``)."""


class ChainChanged(Exception):
    """A folder above the one being changed moved while ``hold_chain`` waited for it; the
    transaction should be run again (``FileService.run_write`` does)."""


def _chain_rows(postgres: bool, *, hold: bool) -> tuple[sa.FromClause, Any]:
    """The rows of ``:start_id`` and every node above it, up to its space's root, as a FROM
    clause with its (id, parent_id, deleted_at) columns; share-locked with ``hold``.

    On PostgreSQL every step up, and every row fetched, is a lookup by key in a LATERAL
    subquery. Written as plain joins with the recursive walk, they were planned as hash joins
    over a sequential scan of every node: the planner guesses the walk at 101 rows, and a scan
    looks cheaper than that many lookups until the table holds some 30,000 rows. Each upload
    read the whole table (measured: with 8,000 nodes, 1.2 ms of a 5 ms PUT, growing with every
    file). The rows are share-locked (FOR SHARE): moving or trashing one of them (both lock it
    FOR NO KEY UPDATE first) waits for the holder's commit, and the other way round; a holder that
    waited reads the row as committed. Before each row's lock, its turn is taken (``turn``), so
    that a holder coming after a mover waits for it. SQLite renders no lock (its writers are
    serialized) and looks up each row by its key anyway.
    """
    up = (
        sa.select(_nodes.c.id, _nodes.c.parent_id)
        .where(_nodes.c.id == sa.bindparam("start_id", type_=sa.Uuid))
        .cte("up", recursive=True)
    )
    steps, above = walk_step(up, ("id", "parent_id"), up=True, postgres=postgres)
    up = up.union_all(sa.select(above.c.id, above.c.parent_id).select_from(steps))
    if postgres:
        held_columns = ("id", "parent_id", "deleted_at")
        # The turn is a condition on the row found by its key: taken before the row's lock.
        turns = [turn(_nodes.c.id, shared=True)] if hold else []
        row = one_row(held_columns, _nodes.c.id == up.c.id, *turns, hold=hold)
        looked_up = row.lateral("held")
        return up.join(looked_up, sa.true()), looked_up
    held = _nodes.alias("held")
    return held.join(up, held.c.id == up.c.id), held


def _up_the_chain(postgres: bool, *, hold: bool, child: bool) -> sa.Select[Any]:
    """The chain's rows, and with ``child`` the folder's live child of one name (its row only,
    unlocked) beside the folder's row."""
    rows, held = _chain_rows(postgres, hold=hold)
    columns = [held.c.id, held.c.parent_id, held.c.deleted_at]
    if not child:
        return sa.select(*columns).select_from(rows)
    named = _nodes.alias("named")
    start = sa.bindparam("start_id", type_=sa.Uuid)
    with_child = rows.outerjoin(
        named,
        sa.and_(
            held.c.id == start,
            # Not "= held.id": PostgreSQL then looked the name up in every folder (a scan of the
            # name index, as long as the table) and kept the one in this folder.
            named.c.parent_id == start,
            named.c.name_key == sa.bindparam("key"),
            named.c.deleted_at.is_(None),
        ),
    )
    return sa.select(*columns, *(named.c[c] for c in _VIEW_COLUMNS), *_VERSION_COLUMNS).select_from(
        _with_current_version(with_child, named)
    )


_CHAIN = by_dialect(functools.partial(_up_the_chain, hold=False, child=False))
_HOLD_CHAIN = by_dialect(functools.partial(_up_the_chain, hold=True, child=False))
_HOLD_CHAIN_AND_CHILD = by_dialect(functools.partial(_up_the_chain, hold=True, child=True))


def hold_chain(session: Session, folder_id: uuid.UUID) -> list[uuid.UUID]:
    """The folder and every folder above it, up to its space's root (nearest first), held for
    the rest of the caller's write transaction: none of them can go to the trash or move
    until it ends.

    A change inside a folder takes this (after locking the node it changes, before the
    owner's row), so that it cannot land in a folder that is going to the trash meanwhile:
    the trash counts the bytes below the folder it removes when it removes it
    (``users.home_bytes``), and a file arriving after that count would be counted as live for
    ever. Raises Conflict when the folder, or one above it, is in the trash (or gone);
    ChainChanged when one of them moved while this waited for it.
    """
    rows = session.execute(for_bind(_HOLD_CHAIN, session), {"start_id": folder_id}).all()
    return _walk_up(folder_id, rows)


def hold_chain_for_child(session: Session, folder_id: uuid.UUID, key: str) -> NodeView | None:
    """``hold_chain`` (with what it raises), and in the same statement the folder's live child
    whose name has the ``name_key`` ``key`` (None when there is none), as it is now but not
    locked."""
    statement = for_bind(_HOLD_CHAIN_AND_CHILD, session)
    rows = session.execute(statement, {"start_id": folder_id, "key": key}).all()
    _walk_up(folder_id, rows)
    child = next((row[3:] for row in rows if row.id == folder_id and row[3] is not None), None)
    return NodeView(*child) if child is not None else None


def chains_of(
    session: Session | sa.Connection, node_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, set[uuid.UUID]]:
    """``chain_ids`` of many nodes, in one query per level of the tree above them (the rows
    of nodes they share are read once), not one per node."""
    parents: dict[uuid.UUID, uuid.UUID | None] = {}
    starts = set(node_ids)
    wanted, asked = set(starts), set(starts)
    while wanted:
        found = get_nodes(session, list(wanted))
        parents.update((node_id, view.parent_id) for node_id, view in found.items())
        wanted = {p for p in parents.values() if p is not None and p not in asked}
        asked |= wanted
    chains: dict[uuid.UUID, set[uuid.UUID]] = {}
    for start in starts:
        chain: set[uuid.UUID] = set()
        current: uuid.UUID | None = start if start in parents else None
        while current is not None and current not in chain:
            chain.add(current)
            current = parents.get(current)
        chains[start] = chain
    return chains


def chain_ids(session: Session | sa.Connection, node_id: uuid.UUID) -> set[uuid.UUID]:
    """The node and every folder above it, up to its space's root (none if it is gone)."""
    return {row.id for row in session.execute(for_bind(_CHAIN, session), {"start_id": node_id})}


def in_trash(session: Session, node_id: uuid.UUID) -> bool:
    """True when the node, or a folder above it, is in the trash."""
    chain = session.execute(for_bind(_CHAIN, session), {"start_id": node_id})
    return any(row.deleted_at is not None for row in chain)


def _walk_up(folder_id: uuid.UUID, found: Sequence[Any]) -> list[uuid.UUID]:
    """The chain from ``folder_id`` up to its root through the (id, parent_id, deleted_at)
    rows ``found``; see ``hold_chain`` for what it raises."""
    rows = {row.id: row for row in found}
    chain: list[uuid.UUID] = []
    current: uuid.UUID | None = folder_id
    while current is not None:
        row = rows.get(current)
        if row is None:
            if not chain:
                raise FolderGone("the folder no longer exists")
            raise ChainChanged(f"a folder above {folder_id} moved")
        if row.deleted_at is not None:
            raise FolderGone("the folder was deleted")
        chain.append(current)
        if len(chain) > len(rows):
            raise ChainChanged(f"the folders above {folder_id} form a loop")
        current = row.parent_id
    return chain
