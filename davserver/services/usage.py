"""Quota usage: each user's running total of the bytes in their own space, and the sums a
listing shows.

``users.home_bytes`` holds the bytes of the live files of a user's own space. Every change that
adds, resizes, trashes or restores a file there moves it in the change's own transaction
(``add_home_bytes``, or ``version_rows.make_current`` for a new version), so reading a user's usage
sums nothing; ``recount`` repairs a total that a bug or a hand-edited database put off. Group
spaces count against no quota. Folder sizes (``subtree_size``, ``child_folder_sizes``) are
summed over the live files below, for listings.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base, Database
from davserver.db.dialect import NO_KEY_UPDATE, by_dialect, for_bind, join_by_key, unnested
from davserver.errors import QuotaExceeded
from davserver.models import NodeKind, Op, Space
from davserver.services import tree
from davserver.services.audit import record_audit


@dataclasses.dataclass(frozen=True)
class UsageDrift:
    """A user whose running total was off: what it held, and what the files add up to."""

    username: str
    kept: int
    counted: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def usage_of(conn: sa.Connection, owner_id: uuid.UUID) -> tuple[int, int | None]:
    """(bytes used, quota in bytes or None for unlimited) of a user's own space."""
    return _usage(conn.execute(_USAGE, {"owner_id": owner_id}).first())


def check_quota(session: Session, owner_id: uuid.UUID, growth: int) -> None:
    """QuotaExceeded when the owner's space would grow past their quota.

    On PostgreSQL the owner's row is locked (``NO_KEY_UPDATE``), so two uploads cannot both
    take the last bytes.
    """
    statement = _USAGE.with_for_update(**NO_KEY_UPDATE)
    used, quota = _usage(session.execute(statement, {"owner_id": owner_id}).first())
    if quota is None or growth <= 0:
        return
    if used + growth > quota:
        raise QuotaExceeded(
            f"this needs {growth} more bytes; {max(0, quota - used)} of the quota are left"
        )


def add_home_bytes(session: Session, owner_id: uuid.UUID, space: str, delta: int) -> None:
    """Keep ``users.home_bytes`` when files of a user's own space appear, change size, go to
    the trash or come back: ``delta`` bytes in all, in the change's transaction."""
    if delta and space == Space.HOME.value:
        session.execute(_ADD_HOME_BYTES, {"owner_id": owner_id, "delta": delta})


def add_upload_bytes(
    session: Session, owner_id: uuid.UUID, space: str, delta: int, *, enforce_quota: bool
) -> None:
    """``add_home_bytes`` for an upload, with ``enforce_quota`` checked against the total the
    same statement writes: QuotaExceeded (the caller rolls back) when ``delta`` grows the space
    past the owner's quota, ``check_quota``'s rule.

    Call it last in the transaction. On PostgreSQL the owner's row stays locked from this
    UPDATE to the commit, and every other upload of the owner waits there: taken earlier (a
    ``check_quota`` before the file's row, or the total moved with the new version), the row
    was held while the rest of the transaction ran, and with 16 uploads at once most of them
    waited for it. Two uploads still cannot both take the last bytes: the second one's UPDATE
    waits for the first's commit and adds to the total it committed."""
    if not enforce_quota or delta <= 0 or space != Space.HOME.value:
        add_home_bytes(session, owner_id, space, delta)
        return
    row = session.execute(_ADD_HOME_BYTES_RETURNING, {"owner_id": owner_id, "delta": delta}).first()
    if row is None or row.quota_bytes is None or row.home_bytes <= row.quota_bytes:
        return
    left = max(0, row.quota_bytes - (row.home_bytes - delta))
    raise QuotaExceeded(f"this needs {delta} more bytes; {left} of the quota are left")


def recount(db: Database, owner_id: uuid.UUID | None = None) -> list[UsageDrift]:
    """Set each user's running total, or only ``owner_id``'s, from the rows; the users whose
    total was off. One transaction per user, holding their row, so a change committing
    meanwhile is counted exactly once. Every change keeps the total, so this finds drift only
    after a bug or a hand-edited database. Writes one logbook row."""
    if owner_id is not None:
        ids = [owner_id]
    else:
        with db.connect() as conn:
            ids = list(conn.scalars(sa.select(_u.c.id).order_by(_u.c.username)))
    drifts = []
    for user_id in ids:
        with db.write() as session:
            row = session.execute(
                sa.select(_u.c.username, _u.c.home_bytes)
                .where(_u.c.id == user_id)
                .with_for_update(**NO_KEY_UPDATE)
            ).first()
            if row is None:
                continue
            home = tree.home_root(session, user_id)
            counted = bytes_below(session, home.id) if home is not None else 0
            if counted != row.home_bytes:
                session.execute(
                    _u.update()
                    .where(_u.c.id == user_id)
                    .values(home_bytes=counted, updated_at=_u.c.updated_at)
                )
                drifts.append(UsageDrift(row.username, row.home_bytes, counted))
    with db.write() as session:
        record_audit(
            session,
            None,
            Op.MAINTENANCE_RECOUNT,
            details={"users": len(ids), "off": [drift.as_dict() for drift in drifts[:100]]},
        )
    return drifts


def bytes_below(session: Session | sa.Connection, node_id: uuid.UUID) -> int:
    """Bytes of the live files at and below a node, which itself may be in the trash."""
    return int(session.scalar(for_bind(_BYTES_BELOW, session), {"root_id": node_id}) or 0)


def subtree_size(conn: sa.Connection, node_id: uuid.UUID) -> int:
    """Bytes of the live files at or below a node; 0 when the node is in the trash."""
    return int(conn.execute(for_bind(_SUBTREE_SIZE, conn), {"root_id": node_id}).scalar() or 0)


def child_folder_sizes(conn: sa.Connection, folder_id: uuid.UUID) -> dict[uuid.UUID, int]:
    """``subtree_size`` of each live folder in a folder, in one query (a listing's)."""
    rows = conn.execute(for_bind(_CHILD_FOLDER_SIZES, conn), {"folder_id": folder_id})
    return {row.start_id: int(row.size or 0) for row in rows}


def folder_sizes(conn: sa.Connection, folder_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """``subtree_size`` of each of these live folders, in one query (a listing's of folders
    from different places: ``/shared/<owner>/``, ``/groups/``)."""
    if not folder_ids:
        return {}
    rows = conn.execute(for_bind(_FOLDER_SIZES, conn), {"ids": folder_ids})
    return {row.start_id: int(row.size or 0) for row in rows}


_n = Base.metadata.tables["nodes"]
_u = Base.metadata.tables["users"]
# Usage is not a change to the account: users.updated_at (an onupdate column) stays as it was.
_ADD_HOME_BYTES = (
    _u.update()
    .where(_u.c.id == sa.bindparam("owner_id", type_=sa.Uuid))
    .values(
        home_bytes=_u.c.home_bytes + sa.bindparam("delta", type_=sa.BigInteger),
        updated_at=_u.c.updated_at,
    )
)
_ADD_HOME_BYTES_RETURNING = _ADD_HOME_BYTES.returning(_u.c.home_bytes, _u.c.quota_bytes)


def _live_below(start: sa.Select[Any], name: str, *, postgres: bool, source: Any = None) -> sa.CTE:
    """The nodes ``start`` selects and, recursively, every live child of each (a node in the
    trash hides what is below it). ``start`` selects ``id`` last; the columns before it (such
    as a ``start_id``) are carried down to every descendant. Each row also has the node's own
    ``kind`` and ``size`` (of ``source``, the ``nodes`` table or what ``start`` reads it as):
    summing over the walk then needs no join back to ``nodes``, which both engines' planners
    did with a scan of the whole table."""
    source = _n if source is None else source  # what ``start`` reads nodes as
    nodes = start.add_columns(source.c.kind, source.c.size).cte(name, recursive=True)
    carried = [column for column in nodes.c if column.key not in ("id", "kind", "size")]
    steps, child = tree.walk_step(nodes, ("id", "kind", "size"), up=False, postgres=postgres)
    return nodes.union_all(
        sa.select(*carried, child.c.id, child.c.kind, child.c.size)
        .select_from(steps)
        # Only folders have children: a level of files ends the walk without another lookup.
        .where(nodes.c.kind == NodeKind.FOLDER.value)
    )


def _files_bytes(walk: sa.CTE) -> sa.ColumnElement[Any]:
    """SUM of the sizes of the files in a ``_live_below`` walk (NULL when it holds none)."""
    return sa.func.sum(sa.case((walk.c.kind == NodeKind.FILE.value, walk.c.size)))


def _bytes_below_statement(postgres: bool, *, root_live: bool) -> sa.Select[Any]:
    """SUM of the sizes of the live files at and below :root_id (a deleted folder hides all
    below it); with ``root_live``, nothing when :root_id is itself in the trash."""
    root = sa.bindparam("root_id", type_=sa.Uuid)
    start = sa.select(_n.c.id).where(_n.c.id == root)
    total = sa.select(_files_bytes(_live_below(start, "tree_ids", postgres=postgres)))
    if not root_live:
        return total
    # Not "deleted_at IS NULL" beside "id = :root_id": see tree.one_row.
    return total.where(tree.one_row(("deleted_at",), _n.c.id == root).scalar_subquery().is_(None))


_SUBTREE_SIZE = by_dialect(functools.partial(_bytes_below_statement, root_live=True))
# What restoring a node from the trash brings back.
_BYTES_BELOW = by_dialect(functools.partial(_bytes_below_statement, root_live=False))


def _child_folder_sizes_statement(postgres: bool) -> sa.Select[Any]:
    """(start_id, size) for each live child folder of :folder_id: the sum of the live files
    below it (a row with size NULL for a folder holding none)."""
    below = _live_below(
        sa.select(_n.c.id.label("start_id"), _n.c.id).where(
            _n.c.parent_id == sa.bindparam("folder_id", type_=sa.Uuid),
            _n.c.kind == NodeKind.FOLDER.value,
            _n.c.deleted_at.is_(None),
        ),
        "below",
        postgres=postgres,
    )
    return sa.select(below.c.start_id, _files_bytes(below).label("size")).group_by(below.c.start_id)


_CHILD_FOLDER_SIZES = by_dialect(_child_folder_sizes_statement)


def _folder_sizes_statement(postgres: bool) -> sa.Select[Any]:
    """(start_id, size) for each of the folders :ids: the sum of the live files below it.
    On PostgreSQL each is looked up by key from the array (see ``tree._by_ids``)."""
    if postgres:
        wanted = unnested("ids", sa.Uuid)
        rows, node = join_by_key(
            wanted,
            _n,
            _n.c.id == wanted.c.value,
            ("id", "kind", "size"),
            "node",
            one=True,
            postgres=True,
        )
        start = sa.select(node.c.id.label("start_id"), node.c.id).select_from(rows)
        below = _live_below(start, "below", postgres=True, source=node)
    else:
        ids = sa.bindparam("ids", expanding=True, type_=sa.Uuid)
        start = sa.select(_n.c.id.label("start_id"), _n.c.id).where(_n.c.id.in_(ids))
        below = _live_below(start, "below", postgres=False)
    return sa.select(below.c.start_id, _files_bytes(below).label("size")).group_by(below.c.start_id)


_FOLDER_SIZES = by_dialect(_folder_sizes_statement)
# A user's quota and its usage: the running total every change keeps (``add_home_bytes``), so
# nothing is summed or walked here (that took 23 ms for 100,000 files, seconds with a trash).
_USAGE = sa.select(_u.c.home_bytes, _u.c.quota_bytes).where(
    _u.c.id == sa.bindparam("owner_id", type_=sa.Uuid)
)


def _usage(row: Any) -> tuple[int, int | None]:
    """(bytes used, quota or None) from a ``_USAGE`` row (none for a user who is gone)."""
    return (int(row.home_bytes), row.quota_bytes) if row is not None else (0, None)
