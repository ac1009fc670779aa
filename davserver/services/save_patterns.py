"""How office programs save over a document on a network drive, seen as MOVEs.

Word, Excel and PowerPoint on a mapped drive save a document in three steps: they write the new
content to a temporary file, rename the document out of the way to a ``.tmp`` name, and rename
the temporary file to the document's name; then they delete the ``.tmp``. To the server that is
a new file taking the name of one moved away moments ago, and the document's history (every
version before) went to the trash with the ``.tmp``.

``moved_away_for_save`` recognises the third step: a file moved onto a free name from which
the same user, within ``SAVE_WINDOW``, moved a file away to a name ending in ``.tmp`` that it
still has. ``FileService.move`` then gives the name back to the document, with the new content
as its newest version, and the ``.tmp`` name to the temporary file, with the document's old
content: every name holds what the program expects, and the history stays with the document
(and its file id, which clients use to follow a file).
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db.types import utcnow
from davserver.models import LogEntry, Node, NodeKind, Op
from davserver.services.actor import Actor
from davserver.services.tree import NodeView, name_key

#: How long after the document was moved away its name can be taken back by a save.
SAVE_WINDOW = dt.timedelta(seconds=60)
# The moves of the user looked at: a save moves two files, and a few more may come between.
_RECENT_MOVES = 20


def moved_away_for_save(
    session: Session, actor: Actor, node: Node, dest_parent: NodeView, dest_name: str
) -> tuple[uuid.UUID, str] | None:
    """The id and ``.tmp`` name of the document a save moved away from
    ``dest_parent/dest_name``, when ``node`` (a file) is the saved content taking its name
    (see the module doc); None otherwise. The caller locks the document and checks it is
    still there (``still_saved_away``)."""
    if node.kind != NodeKind.FILE or node.current_version_id is None:
        return None
    key = name_key(dest_name)
    recent = session.execute(
        sa.select(LogEntry.node_id, LogEntry.details)
        .where(
            LogEntry.user_id == actor.user_id,
            LogEntry.occurred_at >= utcnow() - SAVE_WINDOW,
            LogEntry.op_type == Op.NODE_MOVE.value,
        )
        .order_by(LogEntry.occurred_at.desc(), LogEntry.id.desc())
        .limit(_RECENT_MOVES)
    )
    for node_id, details in recent:
        before = (details or {}).get("before") or {}
        if before.get("parent_id") != str(dest_parent.id):
            continue
        if name_key(str(before.get("name", ""))) != key:
            continue
        # The latest move away from the name decides.
        after = str(((details or {}).get("after") or {}).get("name", ""))
        if node_id is None or node_id == node.id or not after.lower().endswith(".tmp"):
            return None
        return node_id, after
    return None


def still_saved_away(document: Node | None, tmp_name: str, node: Node) -> bool:
    """Whether ``document`` (locked) is still the live file with content the save moved to
    ``tmp_name``, beside ``node`` (the saved content, in the same folder)."""
    return (
        document is not None
        and document.kind == NodeKind.FILE
        and document.deleted_at is None
        and document.current_version_id is not None
        and document.parent_id == node.parent_id
        and document.name == tmp_name
    )
