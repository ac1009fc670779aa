"""How many requests a server process may serve at once, given what the database accepts.

Each cheroot thread serves one request, and a request may hold two database connections at
once: the one its quick reads share for its whole life (``Database.begin_request``) and a
write transaction's. PostgreSQL refuses connections past ``max_connections`` (less those it
keeps for superusers): with two worker processes of 32 threads, a burst of 100 uploads asked
for up to 128 connections of the 97 a default PostgreSQL gives, and about half the uploads got
500 "sorry, too many clients already".

So each process's pool is capped at what its threads can use (``pool_limit``), and where the
processes together could ask for more than the database accepts, each runs fewer threads
(``fit_threads``): a request past them waits in the listen queue for a free thread instead
of failing. Other clients of the same PostgreSQL (another application, psql) take from the
same limit; ``_MARGIN`` leaves a little room for them.
"""

from __future__ import annotations

import dataclasses
import logging

import sqlalchemy as sa

from davserver.config import ConfigError, Settings

log = logging.getLogger(__name__)

# A request's shared read connection and a write transaction's.
CONNECTIONS_PER_THREAD = 2
# Per process, beyond its threads': the housekeeping sweep, a lock sweep, a spare.
SPARE_CONNECTIONS = 3
# Per server: the supervising parent (``--workers``) and a margin for other clients.
_MARGIN = 5
# Fewer threads than this and a few slow uploads would hold every one of them.
MIN_THREADS = 4


def pool_limit(threads: int) -> int:
    """The most connections one process with ``threads`` threads can hold at once."""
    return CONNECTIONS_PER_THREAD * threads + SPARE_CONNECTIONS


def fit_threads(settings: Settings, workers: int, accepted: int | None) -> Settings:
    """``settings`` with as many threads per process as ``workers`` processes can run without
    asking the database for more than the ``accepted`` connections (None: no limit, SQLite).
    ConfigError when not even MIN_THREADS fit."""
    threads = settings.server.threads
    if accepted is None or workers * pool_limit(threads) + _MARGIN <= accepted:
        return settings
    per_process = (accepted - _MARGIN) // workers
    fitted = (per_process - SPARE_CONNECTIONS) // CONNECTIONS_PER_THREAD
    if fitted < MIN_THREADS:
        raise ConfigError(
            f"PostgreSQL accepts {accepted} connections, too few for {workers} server "
            f"processes of at least {MIN_THREADS} threads ({pool_limit(MIN_THREADS)} "
            "connections each): raise its max_connections, or lower server.workers"
        )
    log.warning(
        "PostgreSQL accepts %d connections; %d processes of %d threads could ask for %d. "
        "Serving with %d threads per process; raise max_connections to use server.threads",
        accepted,
        workers,
        threads,
        workers * pool_limit(threads),
        fitted,
    )
    server = dataclasses.replace(settings.server, threads=fitted)
    return dataclasses.replace(settings, server=server)


_LIMITS = sa.text(
    "SELECT current_setting('max_connections')::int AS max_connections,"
    " current_setting('superuser_reserved_connections')::int"
    " + coalesce(current_setting('reserved_connections', true), '0')::int AS reserved,"
    " r.rolsuper AS superuser, r.rolconnlimit AS role_limit, d.datconnlimit AS database_limit"
    " FROM pg_roles r, pg_database d"
    " WHERE r.rolname = current_user AND d.datname = current_database()"
)


def accepted_connections(url: str) -> int | None:
    """How many connections the database accepts from this server's user: PostgreSQL's
    max_connections less those it reserves, and for a user who is not a superuser, its
    role's and its database's CONNECTION LIMIT. None for SQLite (no such limit), or when the
    database cannot be reached (the schema's migration, next, says why)."""
    if sa.make_url(url).get_backend_name() != "postgresql":
        return None
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            row = conn.execute(_LIMITS).one()
    except sa.exc.DBAPIError:
        return None
    finally:
        engine.dispose()
    accepted = int(row.max_connections) - int(row.reserved)
    if not row.superuser:
        for limit in (row.role_limit, row.database_limit):
            if limit is not None and limit >= 0:
                accepted = min(accepted, int(limit))
    return accepted
