"""``/users/<name>/...``: every user's own space, for admins (everything) and moderators
(they read and may move things to the trash); a space added to the namespace
(``NamespaceService.add_space``) with the finder of its members."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from davserver.db import Base
from davserver.services import tree
from davserver.services.namespace import (
    AccessContext,
    NamespaceService,
    Reached,
    Virtual,
    may_see_all_users,
    readable,
)


def users_space(service: NamespaceService, ctx: AccessContext, rest: list[str]) -> list[Any]:
    """``/users/<name>/...``: every user's own space, for admins (everything) and moderators
    (they read and may move things to the trash)."""
    if not may_see_all_users(ctx.actor):
        return []
    query = sa.select(_users.c.username, _users.c.id).where(_users.c.deleted_at.is_(None))
    if rest:
        # Below /users/ only the one user is needed: /users/ itself then stands for them
        # alone, which nothing in the request lists (reading 10,000 names took 40 ms).
        query = query.where(_users.c.username == rest[0])
    with service.db.connect() as conn:
        homes = {row.username: row.id for row in conn.execute(query)}
    found: list[Any] = [Virtual(sorted(homes))]
    if rest and rest[0] in homes:
        found += service.descend(ctx, service.files.home_id(homes[rest[0]]), rest[1:])
    return found


def users_members(
    service: NamespaceService, ctx: AccessContext, rest: list[str]
) -> list[tuple[str, Reached]] | None:
    """The members of ``/users/``: every user's space, from two statements (a user without a
    space yet gets one, as on first use)."""
    if rest or not may_see_all_users(ctx.actor):
        return None
    with service.db.connect() as conn:
        homes = conn.execute(
            sa.select(_users.c.username, _users.c.id).where(_users.c.deleted_at.is_(None))
        ).all()
        roots = tree.home_roots(conn)
    made = service.files.home_ids([user_id for _, user_id in homes if user_id not in roots])
    if made:
        with service.db.connect() as conn:
            roots.update((view.owner_id, view) for view in tree.get_nodes(conn, made).values())
    return readable(ctx, [(name, roots.get(user_id)) for name, user_id in sorted(homes)])


_users = Base.metadata.tables["users"]
