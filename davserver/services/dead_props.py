"""Dead properties: what clients store on an item with PROPPATCH (Explorer's Win32 times,
Finder's and rclone's metadata), kept per node as serialized XML so that they survive a rename.

The limits are checked here (``check_property_name``, ``check_dead_properties``); reading them
for a listing or a copy is one query (``read``, ``read_children``, ``DEAD_OF``). Setting them is
a change with a logbook row, ``FileService.set_dead_properties``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from davserver.db import Base
from davserver.db.dialect import by_dialect, for_bind, join_by_key, unnested
from davserver.errors import BadRequest, QuotaExceeded
from davserver.models.nodes import MAX_PROPERTY_NAME

# Dead properties are what clients note about an item (Explorer's Win32 times take a few
# hundred bytes), not a place for content: they count against no quota, and a listing reads
# those of every child, so each item's are bounded (RFC 4918 9.2.1: 507 for a PROPPATCH).
MAX_DEAD_PROPERTY_BYTES = 64 * 1024


def check_property_name(name: str) -> None:
    """BadRequest for a dead property name (``{namespace}local``) longer than the database
    holds: PostgreSQL refused it with a 500, and SQLite stored it, which then stopped a
    ``db copy`` to PostgreSQL."""
    if len(name) > MAX_PROPERTY_NAME:
        raise BadRequest(
            f"a property name (namespace and local name) has at most {MAX_PROPERTY_NAME}"
            f" characters, not {len(name)}"
        )


def check_dead_properties(kept: dict[str, bytes], changes: dict[str, bytes | None]) -> None:
    """QuotaExceeded when a node's dead properties ``kept``, with ``changes`` (None removes
    one) applied, would hold more than MAX_DEAD_PROPERTY_BYTES of names and values."""
    merged = {**kept, **changes}
    _check_total(sum(_bytes(name, value) for name, value in merged.items()))


class PlannedProperties:
    """A PROPPATCH's changes to a node's dead properties, planned one at a time (WsgiDAV tries
    each property before it sets any), each counted against MAX_DEAD_PROPERTY_BYTES in constant
    time: summing them all again for each of many changes took time and, with the refusals
    kept for the answer, memory growing with the square of their number (a 250 KB request of
    12,000 properties held 2.3 GB). The first change that does not fit is refused; the later
    ones are not counted (they fail with it)."""

    def __init__(self, kept: dict[str, bytes]) -> None:
        self._kept = kept
        self.changes: dict[str, bytes | None] = {}
        self._total = sum(_bytes(name, value) for name, value in kept.items())
        self.refused = False

    def plan(self, name: str, value: bytes | None) -> None:
        """Add setting (or, with None, removing) ``name``; QuotaExceeded the first time the
        properties would no longer fit."""
        if self.refused:
            return
        before = self.changes[name] if name in self.changes else self._kept.get(name)
        self._total += _bytes(name, value) - _bytes(name, before)
        self.changes[name] = value
        if self._total > MAX_DEAD_PROPERTY_BYTES:
            self.refused = True
            _check_total(self._total)


def _bytes(name: str, value: bytes | None) -> int:
    return 0 if value is None else len(name.encode()) + len(value)


def _check_total(total: int) -> None:
    if total > MAX_DEAD_PROPERTY_BYTES:
        raise QuotaExceeded(
            f"an item's properties are limited to {MAX_DEAD_PROPERTY_BYTES} bytes; "
            f"these would take {total}"
        )


def read(conn: sa.Connection, node_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, dict[str, bytes]]:
    """Dead properties of many nodes at once: {node_id: {name: xml bytes}}."""
    ids = list(node_ids)
    result: dict[uuid.UUID, dict[str, bytes]] = {node_id: {} for node_id in ids}
    if ids:
        for node_id, name, value in conn.execute(for_bind(DEAD_OF, conn), {"ids": ids}):
            result[node_id][name] = value
    return result


def read_children(conn: sa.Connection, folder_id: uuid.UUID) -> dict[uuid.UUID, dict[str, bytes]]:
    """Dead properties of a folder's live children, {node_id: {name: xml bytes}} for those
    that have any; by the folder, so a listing binds no list of ids."""
    result: dict[uuid.UUID, dict[str, bytes]] = {}
    for node_id, name, value in conn.execute(_DEAD_OF_CHILDREN, {"folder_id": folder_id}):
        result.setdefault(node_id, {})[name] = value
    return result


_n = Base.metadata.tables["nodes"]
_dp = Base.metadata.tables["dead_properties"]


def _dead_of_statement(postgres: bool) -> sa.Select[Any]:
    """(node_id, name, value) of the dead properties of the nodes in :ids; on PostgreSQL each
    node's looked up by key (``join_by_key``)."""
    columns = ("node_id", "name", "value")
    if not postgres:
        ids = sa.bindparam("ids", expanding=True, type_=sa.Uuid)
        return sa.select(*(_dp.c[c] for c in columns)).where(_dp.c.node_id.in_(ids))
    wanted = unnested("ids", sa.Uuid)
    on = _dp.c.node_id == wanted.c.value
    rows, props = join_by_key(wanted, _dp, on, columns, "props", one=False, postgres=True)
    return sa.select(*(props.c[c] for c in columns)).select_from(rows)


DEAD_OF = by_dialect(_dead_of_statement)
_DEAD_OF_CHILDREN = (
    sa.select(_dp.c.node_id, _dp.c.name, _dp.c.value)
    .join(_n, _n.c.id == _dp.c.node_id)
    .where(_n.c.parent_id == sa.bindparam("folder_id", type_=sa.Uuid), _n.c.deleted_at.is_(None))
)
