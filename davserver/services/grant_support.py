"""Which grants still stand: a grant lasts as long as its granter could make it.

Whoever manages a node's sharing (its owner, the group's admins in a group's space, admins:
``permissions.base_permissions`` gives them SHARE) grants by their own authority. Anyone else
shares on what they were given: through a grant to them, or to a group of theirs. When that
goes (a grant revoked or stripped of rights, a member taken out of a group, a group admin made
an ordinary member, a role taken away, a group or user deleted), so must what they gave on from
it, and what was given on from that, however it was given: to a user or to a group.

``revoke_unsupported`` finds them in one space at a time (grants are on nodes, and give rights
below their node, so a grant is only ever supported by grants of its own space). A grant stands
when it was made by the server (no granter), or by someone who holds, by their roles and
memberships or through grants that stand themselves, SHARE and every right it gives on its
node. Grants that stand are found from those of the managers up (a fixpoint), so two grantees
who shared with each other cannot keep each other's grants alive once the grant that let them
share is gone. A deleted user keeps only what their own space and the groups they administered
give them (``users.delete_user``). Expired grants give nothing, and are left as they are.

A grant that stands now but would stop standing when a grant it rests on expires is given that
expiry (``_Standing``): what was shared on never outlives what it was shared from, also
when that is given an expiry after the sharing. A node moved elsewhere in its space rests on
the grants above its new place only (``recheck_moved``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db.types import FOREVER, NEVER, utcnow
from davserver.models import Grant, Group, GroupMember, Node, Op, Role, User, UserRole
from davserver.services import tree
from davserver.services.account_rules import audit_details, iso
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.permissions import (
    GRANTABLE_MEMBERS,
    GrantRule,
    Perm,
    Principal,
    SpaceOwner,
    base_permissions,
    restrict,
    rights_of_grant,
)


@dataclass(frozen=True)
class _Row:
    rule: GrantRule
    id: uuid.UUID
    granted_by: uuid.UUID | None
    grantee: str


def spaces_of_grants_by(session: Session, user_ids: Iterable[uuid.UUID]) -> set[SpaceOwner]:
    """The spaces holding grants that these users made."""
    ids = list(set(user_ids))
    if not ids:
        return set()
    rows = session.execute(
        sa.select(Node.owner_id, Node.group_id)
        .join(Grant, Grant.node_id == Node.id)
        .where(Grant.granted_by.in_(ids))
        .distinct()
    )
    return {space_of(row.owner_id, row.group_id) for row in rows}


def space_of(owner_id: uuid.UUID, group_id: uuid.UUID | None) -> SpaceOwner:
    """A node's space (the owner of a group's nodes does not matter to the rules)."""
    return SpaceOwner(uuid.UUID(int=0) if group_id is not None else owner_id, group_id)


def revoke_unsupported(
    session: Session,
    actor: Actor | None,
    spaces: Iterable[SpaceOwner],
    because: str,
    lost: Mapping[uuid.UUID, str] | None = None,
) -> int:
    """Revoke, in the caller's transaction, every grant in ``spaces`` that no longer stands
    (see the module doc), each with its logbook row saying why: that its granter's own grant
    was revoked (by the caller: ``lost`` names its grantee by user or group id; or here), else
    ``because``. Returns how many went."""
    return sum(
        _revoke_unsupported(session, actor, space, because, lost or {}) for space in set(spaces)
    )


def recheck_moved(
    session: Session,
    actor: Actor | None,
    space: SpaceOwner,
    moved_from: uuid.UUID,
    now_under: Collection[uuid.UUID],
    because: str,
) -> int:
    """After nodes of ``space`` went from the folder ``moved_from`` to one whose chain (it and
    every folder above it) is ``now_under`` (a MOVE or a restore to another folder, a purge
    moving items trashed from inside the purged folder up), in the caller's transaction: the
    folders they left are those above them before and not now. A grant on them or below them
    whose granter held SHARE, or one of the rights it gives, by a grant on one of those may no
    longer stand, and goes (``revoke_unsupported``). So only grants there to someone who
    shared on in this space (to them, or to a group of theirs) matter: a rename leaves no
    folder and costs nothing; leaving folders without any such grant (nearly every move)
    costs a walk up and a lookup or two by key. Returns how many went."""
    if moved_from in now_under:  # then so is every folder above it
        return 0
    left = tree.chain_ids(session, moved_from) - set(now_under)
    if not left:
        return 0
    given = session.execute(
        sa.select(Grant.user_id, Grant.group_id).where(Grant.node_id.in_(list(left)))
    ).all()
    if not given:
        return 0
    users = {row.user_id for row in given if row.user_id is not None}
    groups = [row.group_id for row in given if row.group_id is not None]
    if groups:
        users |= set(
            session.scalars(sa.select(GroupMember.user_id).where(GroupMember.group_id.in_(groups)))
        )
    shared_on = session.scalar(
        sa.select(Grant.id)
        .join(Node, Node.id == Grant.node_id)
        .where(Grant.granted_by.in_(list(users)), _in_space(space))
        .limit(1)
    )
    return 0 if shared_on is None else revoke_unsupported(session, actor, [space], because)


def _revoke_unsupported(
    session: Session,
    actor: Actor | None,
    space: SpaceOwner,
    because: str,
    lost_before: Mapping[uuid.UUID, str],
) -> int:
    now = utcnow()
    rows = [
        row
        for row in _grants_in(session, space)
        if row.rule.expires_at is None or row.rule.expires_at > now
    ]
    granters = _principals(session, {r.granted_by for r in rows if r.granted_by is not None})
    chains = tree.chains_of(session, {r.rule.node_id for r in rows})
    until = _Standing(space, granters, chains, rows).ends()
    pending = [row for row in rows if until[row.id] <= now]
    for row in rows:
        # Standing now, but not as long as it says: what it rests on ends sooner.
        if now < until[row.id] < (row.rule.expires_at or FOREVER):
            _end_grant(session, actor, row, until[row.id], because)
    # Each says why: the grant its granter lost in this pass, else what began it.
    lost = dict(lost_before)
    lost.update((grantee_id(r.rule.user_id, r.rule.group_id), r.grantee) for r in pending)
    for row in pending:
        who = granters.get(row.granted_by) if row.granted_by is not None else None
        through = [row.granted_by, *(who.groups or {} if who is not None else ())]
        reason = next((f"{lost[x]}'s grant was revoked" for x in through if x in lost), because)
        session.execute(sa.delete(Grant).where(Grant.id == row.id))
        record_audit(
            session,
            actor,
            Op.GRANT_REVOKE,
            node_id=row.rule.node_id,
            details=audit_details(
                actor,
                {"rights": row.rule.rights.names(), "expires_at": iso(row.rule.expires_at)},
                None,
                grantee=row.grantee,
                grant_id=str(row.id),
                because=reason,
            ),
        )
    return len(pending)


class _Standing:
    """Until when each grant of one space stands, from those of its managers up.

    A grant made by the server stands until its own expiry. Any other stands while its granter
    holds SHARE and each of its rights there: for good by their roles and memberships
    (``base_permissions``), else while some grant to them (or a group of theirs) on the node or
    above it gives that right and stands itself. So a grant lasts until the earliest, over the
    rights it needs, of the latest end of the grants giving each, and never past its own
    expiry. The ends are found as the least fixpoint: every grant a granter made starts at
    never and only moves later, so two grantees who shared with each other cannot hold each
    other's grants up. A grant is looked at again only when one it rests on moved later (a
    work list), so a chain of reshares costs its length, in whatever order its rows come.
    """

    def __init__(
        self,
        space: SpaceOwner,
        granters: Mapping[uuid.UUID, Principal],
        chains: Mapping[uuid.UUID, set[uuid.UUID]],  # each granted node and its ancestors
        rows: list[_Row],
    ) -> None:
        self.space = space
        self.granters = granters
        self.rows = rows
        on: dict[uuid.UUID, dict[uuid.UUID, list[_Row]]] = {}  # by node, then by grantee
        for row in rows:
            grantee = grantee_id(row.rule.user_id, row.rule.group_id)
            on.setdefault(row.rule.node_id, {}).setdefault(grantee, []).append(row)
        # For each grant a granter made, the grants that may hold it up: on its node or above,
        # to its granter or a group of theirs; and the other way round.
        self._resting_on: dict[uuid.UUID, list[_Row]] = {}
        self._held_up: dict[uuid.UUID, list[_Row]] = {}
        for row in rows:
            who = granters.get(row.granted_by) if row.granted_by is not None else None
            if who is None:
                continue
            reaching = [
                other
                for node in chains[row.rule.node_id]
                for grantee in (who.user_id, *(who.groups or {}))
                for other in on.get(node, {}).get(grantee, ())
                if other.id != row.id
            ]
            self._resting_on[row.id] = reaching
            for other in reaching:
                self._held_up.setdefault(other.id, []).append(row)

    def ends(self) -> dict[uuid.UUID, dt.datetime]:
        """Until when each grant stands, by id: ``NEVER`` for one that does not stand now."""
        until = {
            row.id: (row.rule.expires_at or FOREVER) if row.granted_by is None else NEVER
            for row in self.rows
        }
        work = deque(row for row in self.rows if row.granted_by is not None)
        queued = {row.id for row in work}
        while work:
            row = work.popleft()
            queued.discard(row.id)
            ends = min(row.rule.expires_at or FOREVER, self._held_until(row, until))
            if ends > until[row.id]:
                until[row.id] = ends
                for resting in self._held_up.get(row.id, ()):
                    if resting.id not in queued:
                        work.append(resting)
                        queued.add(resting.id)
        return until

    def _held_until(self, row: _Row, until: Mapping[uuid.UUID, dt.datetime]) -> dt.datetime:
        """Until when ``row``'s granter holds what it gives, by the grants' ``until`` so far."""
        who = self.granters.get(row.granted_by) if row.granted_by is not None else None
        needed = row.rule.rights | Perm.SHARE
        if who is None or restrict(who, needed) & needed != needed:
            return NEVER  # a granter gone, or a right their role takes away (a viewer's write)
        lasting = base_permissions(who, self.space)
        reaching = self._resting_on.get(row.id, [])
        held = FOREVER
        for right in GRANTABLE_MEMBERS:
            if not right & needed or right & lasting or (right == Perm.READ and lasting):
                continue
            # Any right implies READ, so every grant gives it.
            giving = [o for o in reaching if right == Perm.READ or o.rule.rights & right]
            held = min(held, max((until[o.id] for o in giving), default=NEVER))
        return held


def _end_grant(
    session: Session, actor: Actor | None, row: _Row, ends: dt.datetime, because: str
) -> None:
    """Give ``row`` the expiry ``ends``, with a logbook row saying why."""
    session.execute(sa.update(Grant).where(Grant.id == row.id).values(expires_at=ends))
    record_audit(
        session,
        actor,
        Op.GRANT_CREATE,
        node_id=row.rule.node_id,
        details=audit_details(
            actor,
            {"expires_at": iso(row.rule.expires_at)},
            {"expires_at": iso(ends)},
            grantee=row.grantee,
            grant_id=str(row.id),
            because=because,
        ),
    )


def grantee_id(user_id: uuid.UUID | None, group_id: uuid.UUID | None) -> uuid.UUID:
    """A grant's grantee by id: a user's or a group's (one of them is set)."""
    grantee = user_id or group_id
    assert grantee is not None
    return grantee


def _in_space(space: SpaceOwner) -> sa.ColumnElement[bool]:
    """Whether a node is in ``space`` (a home's by ix_nodes_home_space)."""
    if space.group_id is not None:
        return Node.group_id == space.group_id
    return sa.and_(Node.group_id.is_(None), Node.owner_id == space.owner_id)


def _grants_in(session: Session, space: SpaceOwner) -> list[_Row]:
    result = session.execute(
        sa.select(Grant, User.username, Group.name)
        .join(Node, Node.id == Grant.node_id)
        .outerjoin(User, User.id == Grant.user_id)
        .outerjoin(Group, Group.id == Grant.group_id)
        .where(_in_space(space))
        .order_by(Grant.granted_at, Grant.id)
    )
    rows = []
    for grant, username, group_name in result:
        rule = GrantRule(
            grant.node_id, rights_of_grant(grant), grant.user_id, grant.group_id, grant.expires_at
        )
        grantee = username if username is not None else f"@{group_name}"
        rows.append(_Row(rule, grant.id, grant.granted_by, grantee))
    return rows


def _principals(session: Session, user_ids: set[uuid.UUID]) -> dict[uuid.UUID, Principal]:
    """Each user as the rules see them now: roles and group memberships; a deleted user with
    only the groups they administer (they share on nothing they were given)."""
    if not user_ids:
        return {}
    ids = list(user_ids)
    deleted = set(
        session.scalars(sa.select(User.id).where(User.id.in_(ids), User.deleted_at.is_not(None)))
    )
    roles: dict[uuid.UUID, set[str]] = {uid: set() for uid in ids}
    for uid, name in session.execute(
        sa.select(UserRole.user_id, Role.name)
        .join(Role, Role.id == UserRole.role_id)
        .where(UserRole.user_id.in_(ids))
    ):
        roles[uid].add(name)
    groups: dict[uuid.UUID, dict[uuid.UUID, bool]] = {uid: {} for uid in ids}
    for uid, gid, is_admin in session.execute(
        sa.select(GroupMember.user_id, GroupMember.group_id, GroupMember.is_admin).where(
            GroupMember.user_id.in_(ids)
        )
    ):
        if is_admin or uid not in deleted:
            groups[uid][gid] = is_admin
    return {uid: Principal(uid, frozenset(roles[uid]), groups[uid]) for uid in ids}
