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
expiry (``_Standing.ends``): what was shared on never outlives what it was shared from, also
when that is given an expiry after the sharing. A node moved elsewhere in its space rests on
the grants above its new place (``recheck_moved``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db.types import utcnow
from davserver.models import Grant, Group, GroupMember, Node, Op, Role, User, UserRole
from davserver.services import tree
from davserver.services.account_rules import audit_details, iso
from davserver.services.actor import Actor
from davserver.services.audit import record_audit
from davserver.services.permissions import (
    GrantRule,
    Perm,
    Principal,
    SpaceOwner,
    effective_permissions,
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


def recheck_moved(session: Session, actor: Actor | None, node: Node, because: str) -> int:
    """After ``node`` went to another folder of its space (a MOVE, a restore elsewhere from
    the trash), in the caller's transaction: the grants on it and below it rest on the grants
    above its new place now, and those that no longer stand go (``revoke_unsupported``).

    Only a grant made by someone other than the space's owner (a group's admins, for a group's
    space) can lose its support, and only one at or below ``node``. Those are found from the
    grants up, by key (nodes has no index by space, and the subtree may be large): a server
    where nobody shared on costs one read of the grants table. Returns how many went."""
    space = space_of(node.owner_id, node.group_id)
    managers = sa.select(GroupMember.user_id).where(
        GroupMember.group_id == space.group_id, GroupMember.is_admin.is_(True)
    )
    shared_on = session.scalars(
        sa.select(Grant.node_id)
        .where(
            Grant.granted_by.is_not(None),
            Grant.granted_by != space.owner_id,
            Grant.granted_by.not_in(managers),
        )
        .distinct()
    ).all()
    if not shared_on:
        return 0
    here = [
        view.id
        for view in tree.get_nodes(session, shared_on).values()
        if space_of(view.owner_id, view.group_id) == space
    ]
    if not any(node.id in chain for chain in tree.chains_of(session, here).values()):
        return 0
    return revoke_unsupported(session, actor, [space], because)


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
    stand = _Standing(space, granters, tree.chains_of(session, {r.rule.node_id for r in rows}))
    standing = stand.at(rows, now)
    pending = [row for row in rows if row.id not in standing]
    for row, ends in stand.ends(rows, standing).items():
        _end_grant(session, actor, row, ends, because)
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


@dataclass(frozen=True)
class _Standing:
    """Which grants of one space stand at a time, from those of its managers up."""

    space: SpaceOwner
    granters: Mapping[uuid.UUID, Principal]
    chains: Mapping[uuid.UUID, set[uuid.UUID]]  # each granted node and its ancestors

    def at(self, rows: list[_Row], when: dt.datetime) -> set[uuid.UUID]:
        """The ids of the grants among ``rows`` that stand at ``when`` (a fixpoint: a grant
        stands once grants that stand give its granter SHARE and its rights, so two grantees
        who shared with each other do not keep each other's grants)."""
        standing: dict[uuid.UUID, list[GrantRule]] = {}  # by node
        held_ids: set[uuid.UUID] = set()
        pending = [r for r in rows if r.rule.expires_at is None or r.rule.expires_at > when]
        found = True
        while found and pending:
            found = False
            for row in list(pending):
                if row.granted_by is not None:
                    who = self.granters.get(row.granted_by)
                    chain = self.chains[row.rule.node_id]
                    support = [rule for node in chain for rule in standing.get(node, ())]
                    needed = row.rule.rights | Perm.SHARE
                    held = (
                        Perm.NONE
                        if who is None
                        else effective_permissions(who, self.space, support, when)
                    )
                    if held & needed != needed:
                        continue
                standing.setdefault(row.rule.node_id, []).append(row.rule)
                held_ids.add(row.id)
                pending.remove(row)
                found = True
        return held_ids

    def ends(self, rows: list[_Row], standing: set[uuid.UUID]) -> dict[_Row, dt.datetime]:
        """The grants that stand now but would outlive what lets their granter make them
        (their own grant was given an expiry, or an earlier one), each with when they stop
        standing: the first expiry of a grant to a granter at which they no longer would."""
        alive = [row for row in rows if row.id in standing]
        granter_ids = {row.granted_by for row in alive if row.granted_by is not None}
        granters = [self.granters[g] for g in granter_ids if g in self.granters]
        times = sorted(
            {
                row.rule.expires_at
                for row in alive
                if row.rule.expires_at is not None and any(_to(row.rule, g) for g in granters)
            }
        )
        ends: dict[_Row, dt.datetime] = {}
        for when in times:
            still = self.at(alive, when)
            for row in alive:
                if row.id not in still and row not in ends:
                    ends[row] = when
        return {
            row: when
            for row, when in ends.items()
            if row.rule.expires_at is None or when < row.rule.expires_at
        }


def _to(rule: GrantRule, who: Principal) -> bool:
    """Whether ``rule`` is a grant to ``who`` or to a group of theirs, expired or not."""
    if rule.user_id is not None:
        return rule.user_id == who.user_id
    return rule.group_id in (who.groups or {})


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


def _grants_in(session: Session, space: SpaceOwner) -> list[_Row]:
    in_space = (
        Node.group_id == space.group_id
        if space.group_id is not None
        else sa.and_(Node.owner_id == space.owner_id, Node.group_id.is_(None))
    )
    result = session.execute(
        sa.select(Grant, User.username, Group.name)
        .join(Node, Node.id == Grant.node_id)
        .outerjoin(User, User.id == Grant.user_id)
        .outerjoin(Group, Group.id == Grant.group_id)
        .where(in_space)
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
