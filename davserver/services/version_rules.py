"""The rules of a file's history: when an upload replaces the newest version instead of adding
one (coalescing), and which old versions go (retention).

Coalescing. Desktop programs save in bursts: Windows Explorer writes an empty file, locks it,
then writes the content; Office saves again and again while it holds its lock. An upload
replaces the file's current version in place (same number, new bytes) instead of adding one
when the same user made that version and

- the upload comes under a lock that user holds on the file (the client sent its token) and
  the version was made after the lock was taken ("lock"), or the version is empty and was made
  at most ``PLACEHOLDER_SECONDS`` before the lock was taken (Explorer's placeholder on an
  existing file, "placeholder"); or
- ``coalesce_seconds`` is set and the version is at most that old ("window").

A version a package pins is never replaced: its bytes were promised to the package.

Retention, applied to one file whenever a version is added to it and to every file by
``davserver versions prune``: keep the newest ``keep_last`` versions (0: all); of those older
than ``thin_after_days`` days (0: none), keep only the newest of each UTC day. The current
version and versions pinned by a package always stay. A removed version's blob stays until
``davserver gc`` finds nothing else uses it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from davserver.db import Base
from davserver.db.types import utcnow
from davserver.models import Op
from davserver.services.actor import Actor
from davserver.services.audit import record_audit

# How long before taking a lock an empty version still counts as the placeholder of the save
# that the lock belongs to (Explorer: PUT of 0 bytes, LOCK, PROPPATCH, PUT of the content).
PLACEHOLDER_SECONDS = 60


@dataclass(frozen=True)
class VersionPolicy:
    """Retention and coalescing settings (``versions.*`` in config.yaml); the defaults keep all."""

    keep_last: int = 0
    thin_after_days: int = 0
    coalesce_seconds: int = 0

    @property
    def prunes(self) -> bool:
        return self.keep_last > 0 or self.thin_after_days > 0


@dataclass(frozen=True)
class VersionFacts:
    """What the rules need to know about one version."""

    id: uuid.UUID
    version_no: int
    size: int
    uploaded_by: uuid.UUID | None
    uploaded_at: dt.datetime


def coalesce_reason(
    policy: VersionPolicy,
    current: VersionFacts,
    user_id: uuid.UUID,
    lock_since: dt.datetime | None,
    now: dt.datetime,
) -> str | None:
    """Why an upload by ``user_id`` replaces ``current`` ("lock", "placeholder", "window"), or
    None when it adds a version. ``lock_since``: when the lock the uploader holds on the file
    was taken, None when the upload comes under no lock of theirs."""
    if current.uploaded_by != user_id:
        return None
    if lock_since is not None:
        if current.uploaded_at >= lock_since:
            return "lock"
        placeholder_limit = dt.timedelta(seconds=PLACEHOLDER_SECONDS)
        if current.size == 0 and lock_since - current.uploaded_at <= placeholder_limit:
            return "placeholder"
    window = dt.timedelta(seconds=policy.coalesce_seconds)
    if policy.coalesce_seconds > 0 and now - current.uploaded_at <= window:
        return "window"
    return None


def versions_to_prune(
    policy: VersionPolicy,
    versions: Sequence[VersionFacts],
    *,
    current_id: uuid.UUID | None,
    pinned: Iterable[uuid.UUID] = (),
    now: dt.datetime,
) -> list[VersionFacts]:
    """The versions retention removes from one file's history, newest first."""
    newest_first = sorted(versions, key=lambda v: v.version_no, reverse=True)
    kept = newest_first[: policy.keep_last] if policy.keep_last > 0 else newest_first
    if policy.thin_after_days > 0:
        cutoff = now - dt.timedelta(days=policy.thin_after_days)
        days: set[dt.date] = set()
        thinned = []
        for version in kept:  # newest first, so the first of a day met is its newest
            if version.uploaded_at < cutoff:
                day = version.uploaded_at.astimezone(dt.UTC).date()
                if day in days:
                    continue
                days.add(day)
            thinned.append(version)
        kept = thinned
    keep = {v.id for v in kept} | set(pinned)
    if current_id is not None:
        keep.add(current_id)
    return [v for v in newest_first if v.id not in keep]


# ------------------------------------------------------------------------ in a transaction


def current_version(session: Session, version_id: uuid.UUID) -> VersionFacts | None:
    row = session.execute(_FACTS.where(_v.c.id == version_id)).first()
    return VersionFacts(*row) if row else None


def pinned(session: Session, version_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these versions a package pins."""
    ids = list(version_ids)
    if not ids:
        return set()
    return set(session.scalars(sa.select(_items.c.version_id).where(_items.c.version_id.in_(ids))))


def coalesces(
    session: Session,
    policy: VersionPolicy,
    actor: Actor,
    current_version_id: uuid.UUID,
    lock_since: dt.datetime | None,
) -> str | None:
    """``coalesce_reason`` for an upload onto a file whose current version is
    ``current_version_id`` (the caller holds the file's row); a pinned version is kept."""
    if lock_since is None and policy.coalesce_seconds <= 0:
        return None  # the common case costs no query
    current = current_version(session, current_version_id)
    if current is None:
        return None
    reason = coalesce_reason(policy, current, actor.user_id, lock_since, utcnow())
    if reason is None or pinned(session, [current.id]):
        return None
    return reason


def prune_file(
    session: Session,
    policy: VersionPolicy,
    actor: Actor | None,
    node_id: uuid.UUID,
    *,
    current_id: uuid.UUID | None = None,
    dry_run: bool = False,
) -> list[VersionFacts]:
    """Apply retention to one file whose row the caller holds; returns what was (with
    ``dry_run``: would be) removed, with a logbook row when anything was. ``current_id`` is
    the file's current version when the caller knows it (it is read otherwise)."""
    if not policy.prunes:
        return []
    if current_id is None:
        current_id = session.scalar(sa.select(_n.c.current_version_id).where(_n.c.id == node_id))
    versions = [
        VersionFacts(*row) for row in session.execute(_FACTS.where(_v.c.node_id == node_id))
    ]
    now = utcnow()
    doomed = versions_to_prune(policy, versions, current_id=current_id, now=now)
    if doomed:
        held = pinned(session, [v.id for v in doomed])
        doomed = [v for v in doomed if v.id not in held]
    if not doomed or dry_run:
        return doomed
    session.execute(sa.delete(_v).where(_v.c.id.in_([v.id for v in doomed])))
    record_audit(
        session,
        actor,
        Op.FILE_VERSION_PRUNE,
        node_id=node_id,
        details={
            "removed": sorted(v.version_no for v in doomed),
            "bytes": sum(v.size for v in doomed),
            "keep_last": policy.keep_last,
            "thin_after_days": policy.thin_after_days,
        },
    )
    return doomed


_n = Base.metadata.tables["nodes"]
_v = Base.metadata.tables["file_versions"]
_items = Base.metadata.tables["package_items"]
_FACTS = sa.select(_v.c.id, _v.c.version_no, _v.c.size, _v.c.uploaded_by, _v.c.uploaded_at)
