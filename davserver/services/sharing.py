"""Granting and revoking rights on a node to another user or to a group.

Whoever holds SHARE on a node (its owner, a group admin in the group's space, an admin, or a
grantee given SHARE) may grant others at most the rights they hold themselves. A grant covers the
node and everything below it; granting the same grantee again replaces its rights. Each grant
and revoke is in the logbook with its before and after. Rights are read on every request, so a
revoke takes effect on the grantee's next request.

Who may replace or revoke a grant: those who manage the node's sharing (its owner, the group's
admins in a group's space, admins, the command line: whoever holds SHARE without a grant) every
grant on it; a grantee given SHARE only the grants they made themselves, so that they never
lower or remove what someone with more authority gave.

A grantee's share ends with what let them share: revoking a grant to them or to their group,
or replacing it with less, revokes the grants they made from it, and in turn those made from
these, to users and to groups alike (``grant_support.revoke_unsupported``, which the group and
user services run too when a membership, a group admin or a role ends). A grant they make
never expires after their own does (``holder_until``). Nobody grants themselves: a grant
from a group to a member would keep their access once the group's grant was revoked.

``holder`` is the granter's rights on the node as the namespace computed them; the command
line (actor None) acts with every right.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from davserver.db import Database
from davserver.db.types import utcnow
from davserver.errors import BadRequest, Forbidden, NotFound
from davserver.models import Grant, Group, GroupMember, Op, Role, User, UserRole
from davserver.services import tree
from davserver.services.account_rules import account_key, audit_details, find_live_user, iso
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.grant_support import grantee_id, revoke_unsupported, space_of
from davserver.services.groups import find_group
from davserver.services.permissions import (
    EVERYTHING,
    GRANTABLE,
    Perm,
    Principal,
    SpaceOwner,
    base_permissions,
    rights_of_grant,
)
from davserver.services.tree import NodeView

if TYPE_CHECKING:
    from davserver.services.lock_reach import LockReach


@dataclass(frozen=True)
class GrantInfo:
    id: uuid.UUID
    node_id: uuid.UUID
    grantee: str  # a username, or @group
    rights: list[str]
    granted_by: str | None
    granted_at: dt.datetime
    expires_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _set_rights(grant: Grant, rights: Perm) -> None:
    grant.can_read = bool(rights & Perm.READ)
    grant.can_download = bool(rights & Perm.DOWNLOAD)
    grant.can_write = bool(rights & Perm.WRITE)
    grant.can_share = bool(rights & Perm.SHARE)


class SharingService:
    def __init__(self, db: Database, locks: LockReach | None = None) -> None:
        self.db = db
        self.locks = locks  # releases the locks of those who may no longer write

    def grant(
        self,
        actor: Actor | None,
        node: NodeView,
        holder: Perm,
        *,
        user: str | None = None,
        group: str | None = None,
        rights: Perm,
        expires_at: dt.datetime | None = None,
        holder_until: dt.datetime | None = None,
    ) -> GrantInfo:
        """Give ``user`` or ``group`` ``rights`` on ``node`` (replacing an earlier grant).

        ``holder_until`` is when the granter's own hold of these rights and SHARE ends (None:
        never; ``NamespaceService.held_until``): the grant expires then at the latest, so a
        grantee cannot make their access outlive their grant by resharing (to a group they
        are in, or to a friend).

        Raises Forbidden (no SHARE, more than the granter holds, replacing a grant someone
        else made without managing the node's sharing, or signed in with an API key),
        NotFound (no such user or group) or BadRequest (no rights, both or neither grantee,
        expiry in the past, granting the owner their own space, granting a space itself).
        """
        holder = EVERYTHING if actor is None else holder
        if actor is not None and actor.auth_method == "apikey":
            # A grant lasts as long as it says: made with a key given out for a day (or
            # stolen), it would outlive the key. As for making keys (ApiKeyService.create).
            raise Forbidden("an API key cannot share items: sign in with your password")
        if not holder & Perm.SHARE:
            raise Forbidden("you may not share this item")
        if node.parent_id is None:
            # A space's root has no name to be listed by in the grantee's /shared/<owner>/.
            raise BadRequest("a space itself is not shared: share the folders or files in it")
        rights &= GRANTABLE
        if not rights:
            raise BadRequest("a grant gives at least one right")
        if rights & ~holder:
            extra = ", ".join((rights & ~holder).names())
            raise Forbidden(f"you cannot grant rights you do not hold: {extra}")
        if (user is None) == (group is None):
            raise BadRequest("grant to exactly one user or one group")
        if expires_at is not None and expires_at <= utcnow():
            raise BadRequest("a grant expires in the future")
        if actor is not None and holder_until is not None:
            expires_at = holder_until if expires_at is None else min(expires_at, holder_until)
        for attempt in range(2):
            try:
                info, lowered, label = self._write_grant(
                    actor, node, rights, expires_at, user=user, group=group
                )
                break
            except IntegrityError:
                # A grant to this grantee on this item was committed since this one looked
                # for it (one per item and grantee, in the database): this one replaces it,
                # as if it had been sent second.
                if attempt:
                    raise
        if lowered:
            self._release_locks(actor, node, f"{label}'s grant was changed")
        return info

    def _write_grant(
        self,
        actor: Actor | None,
        node: NodeView,
        rights: Perm,
        expires_at: dt.datetime | None,
        *,
        user: str | None,
        group: str | None,
    ) -> tuple[GrantInfo, bool, str]:
        """``grant``'s transaction: (the grant, whether it lowered an earlier one, the
        grantee's label)."""
        with self.db.write() as session:
            if user is not None:
                grantee = find_live_user(session, user)
                if grantee.id == node.owner_id and node.group_id is None:
                    raise BadRequest(f"{grantee.username!r} owns this item already")
                match = Grant.user_id == grantee.id
                label = grantee.username
            else:
                team = find_group(session, group or "")
                match = Grant.group_id == team.id
                label = "@" + team.name
            row = session.scalars(sa.select(Grant).where(Grant.node_id == node.id, match)).first()
            before, lowered = None, False
            if row is None:
                if actor is not None and user is not None and grantee.id == actor.user_id:
                    raise BadRequest("you cannot grant rights to yourself")
                row = Grant(
                    node_id=node.id,
                    user_id=grantee.id if user is not None else None,
                    group_id=team.id if group is not None else None,
                )
                session.add(row)
            else:
                _require_may_change(session, actor, node, row)
                granter = actor.user_id if actor else None
                if (rights_of_grant(row), row.expires_at, row.granted_by) == (
                    rights,
                    expires_at,
                    granter,
                ):
                    # The same grant again (a script making sure a share exists): nothing
                    # changes, and the logbook gets no row saying so every time.
                    return _infos(session, Grant.id == row.id)[0], False, label
                before = {"rights": rights_of_grant(row).names(), "expires_at": iso(row.expires_at)}
                lowered = bool(rights_of_grant(row) & ~rights) or (
                    expires_at is not None
                    and (row.expires_at is None or expires_at < row.expires_at)
                )
            _set_rights(row, rights)
            row.expires_at = expires_at
            row.granted_by = actor.user_id if actor else None
            row.granted_at = utcnow()
            session.flush()
            if before is not None and lowered:  # what the grantee gave on from it may go
                space = space_of(node.owner_id, node.group_id)
                revoke_unsupported(session, actor, [space], f"{label}'s grant was changed")
            record_audit(
                session,
                actor,
                Op.GRANT_CREATE,
                node_id=node.id,
                details=audit_details(
                    actor,
                    before,
                    {"rights": rights.names(), "expires_at": iso(expires_at)},
                    grantee=label,
                    grant_id=str(row.id),
                ),
            )
            info = _infos(session, Grant.id == row.id)[0]
        return info, lowered, label

    def revoke(
        self, actor: Actor | None, node: NodeView, holder: Perm, grant_id: uuid.UUID
    ) -> None:
        """Remove a grant on ``node``; the grantee is refused from their next request on. A
        user may remove a grant to themselves (declining a share) without SHARE.

        Raises Forbidden (no SHARE, or a grant someone else made without managing the node's
        sharing) or NotFound (no such grant on the node).
        """
        self._revoke(actor, node, holder, Grant.id == grant_id)

    def revoke_grantee(
        self,
        actor: Actor | None,
        node: NodeView,
        holder: Perm,
        *,
        user: str | None = None,
        group: str | None = None,
    ) -> None:
        """Remove the grant on ``node`` to ``user`` or ``group``, named in any case as for
        ``grant`` (names are unique ignoring case); a deleted user's grant too.

        Raises BadRequest unless exactly one grantee is named, and what ``revoke`` raises.
        """
        if (user is None) == (group is None):
            raise BadRequest("revoke from exactly one user or one group")
        if user is not None:
            named = sa.select(User.id).where(sa.func.lower(User.username) == account_key(user))
            match = Grant.user_id == named.scalar_subquery()
        else:
            named = sa.select(Group.id).where(sa.func.lower(Group.name) == account_key(group or ""))
            match = Grant.group_id == named.scalar_subquery()
        self._revoke(actor, node, holder, match)

    def _revoke(
        self, actor: Actor | None, node: NodeView, holder: Perm, which: sa.ColumnElement[bool]
    ) -> None:
        holder = EVERYTHING if actor is None else holder
        refused = Forbidden("you may not change the sharing of this item")
        with self.db.write() as session:
            row = session.scalars(sa.select(Grant).where(Grant.node_id == node.id, which)).first()
            # A user may always decline what was shared with them (their own user grant);
            # anything else needs SHARE, and is refused alike whether or not such a grant is
            # there (which only those who may share may list).
            declining = row is not None and actor is not None and row.user_id == actor.user_id
            if not declining and not holder & Perm.SHARE:
                raise refused
            if row is None:
                raise NotFound("no such grant on this item")
            if not declining:
                _require_may_change(session, actor, node, row)
            _remove_grant(session, actor, node, row.id)
        self._release_locks(actor, node, "a grant was revoked")

    def _release_locks(self, actor: Actor | None, node: NodeView, because: str) -> None:
        """After rights on ``node`` were taken away (with the grants given on from them, in
        the same space): the locks there whose holders may no longer write what they lock
        (``LockReach``)."""
        if self.locks is not None:
            self.locks.release(
                actor, spaces=[space_of(node.owner_id, node.group_id)], because=because
            )

    def grants_on(
        self,
        node: NodeView,
        *,
        reaching: tuple[uuid.UUID, Collection[uuid.UUID]] | None = None,
    ) -> list[GrantInfo]:
        """The grants on one node (not those inherited from its folders), in one query.

        With ``reaching`` (a user id and the ids of their groups) only the grants to that user
        or one of those groups: who else was given access is for those who may share.
        """
        where = [Grant.node_id == node.id]
        if reaching is not None:
            user_id, group_ids = reaching
            where.append(sa.or_(Grant.user_id == user_id, Grant.group_id.in_(list(group_ids))))
        with self.db.read() as session:
            return _infos(session, *where)


def drop_grants_of_deleted_user(
    session: Session, actor: Actor | None, user_id: uuid.UUID, username: str
) -> int:
    """Revoke, in the caller's transaction, the grants to a user being deleted and the grants
    they made where only a grant let them share (their reshares, through a grant to them or to
    a group of theirs), and in turn those made from these, each with its logbook row. What they
    granted on what they manage (their own space, a group's space they administer) stays,
    like their files. Returns how many grants went.
    """
    because = f"{username} was deleted"
    count = sa.select(sa.func.count()).select_from(Grant)
    before = session.scalar(count) or 0
    to_them = session.scalars(sa.select(Grant.id).where(Grant.user_id == user_id)).all()
    spaces: set[SpaceOwner | None] = set()
    lost: dict[uuid.UUID, str] = {}
    for grant_id in to_them:
        spaces.add(_remove_grant(session, actor, None, grant_id, because, cascade=False, lost=lost))
    roles = frozenset(
        session.scalars(
            sa.select(Role.name)
            .join(UserRole, UserRole.role_id == Role.id)
            .where(UserRole.user_id == user_id)
        )
    )
    made = session.execute(
        sa.select(Grant.id, Grant.node_id).where(Grant.granted_by == user_id)
    ).all()
    for grant_id, node_id in made:
        node = tree.get_node(session, node_id)
        if node is not None and not _manages(session, user_id, roles, node):
            spaces.add(
                _remove_grant(session, actor, node, grant_id, because, cascade=False, lost=lost)
            )
    # Then what was given on from those, once per space.
    cascaded = [space for space in spaces if space is not None]
    revoke_unsupported(session, actor, cascaded, f"{username}'s grant was revoked", lost)
    return before - (session.scalar(count) or 0)


def _remove_grant(
    session: Session,
    actor: Actor | None,
    node: NodeView | None,
    grant_id: uuid.UUID,
    because: str | None = None,
    *,
    cascade: bool = True,
    lost: dict[uuid.UUID, str] | None = None,
) -> SpaceOwner | None:
    """Delete a grant (on ``node``; None: look it up) with its logbook row, and, with
    ``cascade``, what no longer stands in its space without it (``revoke_unsupported``);
    without, its grantee goes into ``lost`` for the caller's own. Nothing when it is gone
    already. Returns its space, None when it was gone."""
    found = _infos(session, Grant.id == grant_id)
    if not found:
        return None
    info = found[0]
    if node is None:
        node = tree.get_node(session, info.node_id)
    grantee = session.execute(
        sa.delete(Grant).where(Grant.id == grant_id).returning(Grant.user_id, Grant.group_id)
    ).one()
    reason = {"because": because} if because is not None else {}
    record_audit(
        session,
        actor,
        Op.GRANT_REVOKE,
        node_id=info.node_id,
        details=audit_details(
            actor,
            {"rights": info.rights, "expires_at": iso(info.expires_at)},
            None,
            grantee=info.grantee,
            grant_id=str(info.id),
            **reason,
        ),
    )
    if node is None:
        return None
    space = space_of(node.owner_id, node.group_id)
    gone = {grantee_id(grantee.user_id, grantee.group_id): info.grantee}
    if cascade:
        revoke_unsupported(session, actor, [space], f"{info.grantee}'s grant was revoked", gone)
    elif lost is not None:
        lost.update(gone)
    return space


def _manages_sharing(session: Session, actor: Actor | None, node: NodeView) -> bool:
    """Whether ``actor`` may replace and revoke every grant on ``node``: the command line (None),
    an admin, the owner of a user's space, or an admin of the group whose space it is. That is
    whoever holds SHARE there by role or ownership, without a grant."""
    if actor is None:
        return True
    return _manages(session, actor.user_id, actor.roles, node)


def _manages(session: Session, user_id: uuid.UUID, roles: frozenset[str], node: NodeView) -> bool:
    """Whether the user holds SHARE on ``node`` by role or ownership (see _manages_sharing)."""
    groups: dict[uuid.UUID, bool] = {}
    if node.group_id is not None:
        is_admin = session.scalar(
            sa.select(GroupMember.is_admin).where(
                GroupMember.group_id == node.group_id, GroupMember.user_id == user_id
            )
        )
        if is_admin is not None:
            groups[node.group_id] = is_admin
    who = Principal(user_id, roles, groups)
    return bool(base_permissions(who, SpaceOwner(node.owner_id, node.group_id)) & Perm.SHARE)


def _require_may_change(session: Session, actor: Actor | None, node: NodeView, row: Grant) -> None:
    """Raise Forbidden unless ``actor`` may replace or revoke the grant ``row`` on ``node``.

    A grantee holding SHARE changes only the grants they made: a grant someone else made (the
    owner, most often) may give rights they do not hold, or be one the owner wants kept.
    """
    if actor is not None and row.granted_by == actor.user_id:
        return
    if _manages_sharing(session, actor, node):
        return
    info = _infos(session, Grant.id == row.id)[0]
    raise Forbidden(
        f"you may only change the grants you made: {info.grantee}'s grant on this item was "
        f"made by {info.granted_by or 'the server'}"
    )


_grantee = aliased(User, name="grantee")
_granter = aliased(User, name="granter")
_INFOS = (
    sa.select(Grant, _grantee.username, Group.name, _granter.username)
    .outerjoin(_grantee, _grantee.id == Grant.user_id)
    .outerjoin(Group, Group.id == Grant.group_id)
    .outerjoin(_granter, _granter.id == Grant.granted_by)
    .order_by(Grant.granted_at)
)


def _infos(session: Any, *where: sa.ColumnElement[bool]) -> list[GrantInfo]:
    """The grants matching ``where``, oldest first, with the names they refer to."""
    return [
        _info(row, user if user is not None else f"@{group}", granter)
        for row, user, group, granter in session.execute(_INFOS.where(*where))
    ]


def _info(row: Grant, grantee: str, granter: str | None) -> GrantInfo:
    return GrantInfo(
        id=row.id,
        node_id=row.node_id,
        grantee=grantee,
        rights=rights_of_grant(row).names(),
        granted_by=granter,
        granted_at=row.granted_at,
        expires_at=row.expires_at,
    )
