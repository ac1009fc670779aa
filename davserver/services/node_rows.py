"""The node tree's rows inside a write transaction: find and lock a node, hold the folders
above it, insert a child, move one to the trash, and find what a COPY or MOVE would replace.

Every function runs in its caller's transaction (``FileService.run_write``); the services that
change files and folders (``files``, ``uploads``, ``versions``, ``trash``) share them. Only
``trash_node`` writes its own logbook row; for the rest, the caller writes the row of what it
did.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base
from davserver.db.dialect import NO_KEY_UPDATE, is_postgres
from davserver.db.types import UTCDateTime, utcnow
from davserver.errors import AlreadyExists, Conflict, Forbidden, NotFound, PreconditionFailed
from davserver.models import Node, NodeKind, Op, Space
from davserver.services import tree
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.tree import NodeView, name_key
from davserver.services.usage import add_home_bytes, bytes_below


def live_node(session: Session, node_id: uuid.UUID) -> Node:
    """The node, locked for this transaction (``NO_KEY_UPDATE``, after its turn:
    ``tree.take_turn``); NotFound when it is missing or in the trash."""
    tree.take_turn(session, node_id)
    node = session.get(Node, node_id, with_for_update=NO_KEY_UPDATE)
    if node is None or node.deleted_at is not None:
        raise NotFound("no such file or folder")
    return node


def held_node(session: Session, node_id: uuid.UUID, *, seen: NodeView | None = None) -> Node:
    """``live_node``, with the folders above it held until the transaction ends
    (``tree.hold_chain``): for a change to what the node counts for in its owner's usage (its
    size, or whether it is live), which must not race with a folder above it going to the
    trash. ``seen``: see ``still_where_seen``, checked first (a node moved meanwhile into a
    folder since trashed is NotFound where the request found it, not in a deleted folder)."""
    node = still_where_seen(live_node(session, node_id), seen)
    if node.parent_id is not None:
        try:
            tree.hold_chain(session, node.parent_id)
        except tree.FolderGone:
            # It went to the trash with its folder meanwhile (a client deleting a folder and
            # a file in it at once): gone from its URL, as a missing node is, not a conflict.
            raise NotFound("no such file or folder: a folder above it was deleted") from None
    return node


def hold_folder(session: Session, folder: NodeView) -> None:
    """``tree.hold_chain`` for a change inside ``folder``; nothing to hold for a space's root,
    which can neither move nor go to the trash."""
    if folder.parent_id is not None:
        tree.hold_chain(session, folder.id)


# The request's two URLs (say /users/<name>/a and /files/a) name one node: WsgiDAV compares only
# the URLs, and refuses the same one with 403.
SAME = "source and destination are the same"


def still_where_seen(node: Node, seen: NodeView | None) -> Node:
    """``node`` (locked by the caller), if it is still where a request found it (``seen``,
    None: wherever it is). NotFound when it has moved or been renamed since: another
    request's MOVE committed in between, and the request's URL no longer names it. A folder
    above it moving meanwhile does not matter: the outcome is as if this ran first."""
    if seen is not None and (node.parent_id, node.name) != (seen.parent_id, seen.name):
        raise NotFound("no such file or folder: it was moved or renamed meanwhile")
    return node


def occupant_at(
    session: Session,
    folder: NodeView,
    name: str,
    *,
    overwrite: bool,
    mover: Node | None = None,
) -> NodeView | None:
    """What a COPY or MOVE to ``folder/name`` replaces: the live node there now, locked
    (None when the name is free, or holds ``mover`` itself: a case-only rename).
    PreconditionFailed when something is there and the client did not agree to
    ``overwrite`` it. What the request saw there may have gone or come meanwhile."""
    key = name_key(name)
    _hold_name(session, folder.id, key)
    found = tree.child_for_update(session, folder.id, key)
    if found is None or (mover is not None and found.id == mover.id):
        return None
    if not overwrite:
        raise PreconditionFailed(f"{name!r} exists and Overwrite is F")
    return found


def refuse_replacing_a_folder_above(
    session: Session, occupant: NodeView, source_parent_id: uuid.UUID | None
) -> None:
    """Forbidden when the destination a COPY or MOVE would replace is a folder the source is
    in: replacing it would take the source along to the trash, and everything else in that
    folder with it (mod_dav answers 403 "Destination collection contains the Source" too)."""
    if (
        occupant.is_folder
        and source_parent_id is not None
        and occupant.id in tree.chain_ids(session, source_parent_id)
    ):
        raise Forbidden("the destination is a folder the source is in")


def _hold_name(session: Session, folder_id: uuid.UUID, key: str) -> None:
    """On PostgreSQL, one COPY or MOVE at a time onto one name in a folder, until the
    transaction ends (a transaction-level advisory lock; SQLite's writers queue anyway).

    Without it, of several waiting to replace what is there, each that waited for the
    winner's row lock found nothing (that row left the name, and the winner's came after
    the statement began), collided with the winner's row and ran again: one more round for
    each contender, past ``FileService.run_write``'s retries (412 for a MOVE with Overwrite:
    T). Once this is held, the lookup that follows sees the last winner's row.
    """
    if is_postgres(session):
        digest = hashlib.blake2b(f"{folder_id}/{key}".encode(), digest_size=8).digest()
        lock_key = int.from_bytes(digest, "big", signed=True)
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key)))


def trash_node(
    session: Session,
    actor: Actor,
    node_id: uuid.UUID,
    *,
    overwritten: bool = False,
    seen: NodeView | None = None,
) -> None:
    """Move a node, and so everything below it, to the trash: one UPDATE. ``seen``: see
    ``still_where_seen``."""
    node = held_node(session, node_id, seen=seen)
    if node.parent_id is None:
        raise Conflict("the root of a space cannot be deleted")
    if node.space == Space.HOME.value:  # what it and everything below it held stops counting
        add_home_bytes(session, node.owner_id, node.space, -bytes_below(session, node.id))
    node.deleted_at = utcnow()
    node.deleted_by = actor.user_id
    session.flush()
    details: dict[str, object] = {"name": node.name}
    if overwritten:
        details["overwritten"] = True
    record_audit(session, actor, Op.NODE_DELETE, node_id=node.id, details=details)


def insert_child(
    session: Session,
    parent_id: uuid.UUID,
    name: str,
    kind: NodeKind,
    *,
    mime: str | None = None,
    known_free: bool = False,
    now: dt.datetime | None = None,
) -> uuid.UUID:
    """Insert a child that inherits owner, space and group from its live parent folder,
    created ``now`` (default: the present).

    Raises AlreadyExists when a live sibling has the name (``known_free``: the caller just
    looked), Conflict when the parent is gone.
    """
    key = name_key(name)
    if (
        not known_free
        and session.scalar(_LIVE_CHILD, {"parent_id": parent_id, "key": key}) is not None
    ):
        raise AlreadyExists(f"{name!r} exists")
    node_id = uuid.uuid4()
    inserted = session.execute(
        _INSERT_CHILD,
        {
            "id": node_id,
            "parent_id": parent_id,
            "name": name,
            "key": key,
            "kind": kind.value,
            "mime": mime,
            "now": now or utcnow(),
        },
    )
    if inserted.first() is None:
        raise Conflict("the parent folder does not exist")
    return node_id


def view_of(session: Session, node_id: uuid.UUID) -> NodeView:
    """The node as the caller's transaction sees it now (pending changes flushed)."""
    session.flush()
    view = tree.get_node(session, node_id)
    assert view is not None
    return view


_n = Base.metadata.tables["nodes"]
# A new child inherits owner, space and group from its parent, which must still be live. The
# parent is looked up by its id alone (see tree.one_row), then checked.
_parent = tree.one_row(
    ("id", "owner_id", "space", "group_id", "deleted_at", "kind"),
    _n.c.id == sa.bindparam("parent_id", type_=sa.Uuid),
).subquery("parent")
_INSERT_CHILD = (
    _n.insert()
    .from_select(
        [
            "id",
            "parent_id",
            "name",
            "name_key",
            "kind",
            "owner_id",
            "space",
            "group_id",
            "mime_type",
            "size",
            "created_at",
            "modified_at",
        ],
        sa.select(
            sa.bindparam("id", type_=sa.Uuid),
            _parent.c.id,
            sa.bindparam("name", type_=sa.String),
            sa.bindparam("key", type_=sa.String),
            sa.bindparam("kind", type_=sa.String),
            _parent.c.owner_id,
            _parent.c.space,
            _parent.c.group_id,
            sa.bindparam("mime", type_=sa.String),
            sa.literal(0, sa.BigInteger),
            sa.bindparam("now", type_=UTCDateTime),
            sa.bindparam("now", type_=UTCDateTime),
        ).where(
            _parent.c.deleted_at.is_(None),
            _parent.c.kind == NodeKind.FOLDER.value,
        ),
    )
    .returning(_n.c.id)
)


_LIVE_CHILD = sa.select(_n.c.id).where(
    _n.c.parent_id == sa.bindparam("parent_id", type_=sa.Uuid),
    _n.c.name_key == sa.bindparam("key"),
    _n.c.deleted_at.is_(None),
)
