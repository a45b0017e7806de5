"""Connections and schema: where each kind of connection goes, the pools, and the migration
runner.

Many production PostgreSQL sites sit behind PgBouncer in transaction mode: each transaction
may run on another server connection. Through one, nothing that lives in a session works:
prepared statements, LISTEN, session-level advisory locks. So the pool prepares nothing when
it goes through a pooler; LISTEN and the migrations use a direct URL when one is given
(SESSIONFLOW_LISTEN_DATABASE_URL); and the migrations lock per transaction, which works both
ways."""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool

from sessionflow.logs import first_line
from sessionflow.queries import Q, sql_dir
from sessionflow.settings import Settings

log = logging.getLogger(__name__)

# Any constant both replicas agree on: they serialise on it while migrating.
MIGRATION_LOCK_KEY = 0x5E55_10F1_0000_0001

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

LISTEN_OFF = (
    "LISTEN cannot work through a transaction pooler (SESSIONFLOW_DATABASE_POOLER=transaction) "
    "and SESSIONFLOW_LISTEN_DATABASE_URL is not set: live updates are off (clients poll "
    "batch-status instead) and workers find new work by their safety poll alone "
    "(SESSIONFLOW_WORKER_POLL_SECONDS). Set SESSIONFLOW_LISTEN_DATABASE_URL to a direct "
    "connection to PostgreSQL to turn them on"
)


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path


def migrations() -> list[Migration]:
    """The numbered files of sql/, in the order they apply."""
    files = sorted(p for p in sql_dir().glob("[0-9][0-9][0-9]_*.sql"))
    return [Migration(p.stem, p) for p in files]


def migrate(dsn: str, *, until: str | None = None) -> list[str]:
    """Apply every migration not yet recorded (up to and including `until`, if named: how a
    test builds a database of an earlier release); returns the names applied.

    Safe to run from several processes at once, and through a transaction pooler: each
    migration runs in a transaction of its own that first takes a transaction-level advisory
    lock (a session-level one, behind a pooler, would stay held by whichever server connection
    took it, and block every later start), checks the ledger again, and records itself before
    it applies, so a racing duplicate would fail on the primary key instead of applying twice."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        with conn.transaction():
            _lock(conn)
            conn.execute(_CREATE_LEDGER)
        done = {row[0] for row in conn.execute(Q.migrations_applied)}
        for migration in migrations():
            if until is not None and migration.name > until:
                break
            if migration.name not in done and _apply(conn, migration):
                applied_now.append(migration.name)
                log.info("applied migration %s", migration.name)
    return applied_now


def _lock(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))


def _apply(conn: psycopg.Connection, migration: Migration) -> bool:
    """Apply one migration unless another process did meanwhile; whether this one did."""
    with conn.transaction():
        _lock(conn)
        cur = conn.execute("SELECT 1 FROM schema_migrations WHERE name = %s", (migration.name,))
        if cur.fetchone() is not None:
            return False
        conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (migration.name,))
        conn.execute(migration.path.read_bytes())
    return True


async def pending_migrations(pool: AsyncConnectionPool, wait: float = 2.0) -> list[str]:
    async with pool.connection(timeout=wait) as conn:
        cur = await conn.execute(Q.migrations_applied)
        done = {row[0] for row in await cur.fetchall()}
    return [m.name for m in migrations() if m.name not in done]


# A connection back in the pool for less than this was answering a moment ago: it is handed
# out again without the check's round trip (which doubled the queries of a batch-status poll).
# One idle longer (after a database restart, say) is checked, as any connection was before.
FRESH_SECONDS = 1.0


class _FreshCheck:
    """The pool's check and reset callbacks: reset stamps each connection as it comes back;
    check asks the server (an empty query) only about one that has been idle for longer than
    FRESH_SECONDS, or that psycopg already knows to be broken."""

    def __init__(self) -> None:
        self._returned: weakref.WeakKeyDictionary[psycopg.AsyncConnection[object], float] = (
            weakref.WeakKeyDictionary()
        )

    async def reset(self, conn: psycopg.AsyncConnection[object]) -> None:
        self._returned[conn] = time.monotonic()

    async def check(self, conn: psycopg.AsyncConnection[object]) -> None:
        returned = self._returned.pop(conn, None)
        if returned is not None and not conn.broken and time.monotonic() - returned < FRESH_SECONDS:
            return
        await AsyncConnectionPool.check_connection(conn)


def make_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    timeout: float,
    prepare: bool = True,
    name: str = "sessionflow",
) -> AsyncConnectionPool:
    """A closed pool; the caller opens it (`await pool.open()`) inside its event loop.

    prepare=False: for a pool that goes through a transaction pooler, where a statement
    prepared on one server connection is missing on the next. psycopg then prepares nothing,
    neither after prepare_threshold executions nor where a query asks with prepare=True."""
    fresh = _FreshCheck()
    return AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": 5 if prepare else None},
        check=fresh.check,
        reset=fresh.reset,
        name=name,
    )


def worker_pool_size(concurrency: int) -> int:
    """The connections a worker running `concurrency` jobs can hold at once: one per running
    job, one for the claim loop and one for the heartbeat."""
    return concurrency + 2


@dataclass(frozen=True)
class Connections:
    """Where each kind of connection goes (see connections())."""

    dsn: str  # the pools': every query
    # LISTEN needs a PostgreSQL session of its own. None: there is none to be had, as
    # database_url goes through a transaction pooler and no direct URL is set.
    listen_dsn: str | None
    prepare: bool  # whether the pools may prepare statements

    @property
    def migrate_dsn(self) -> str:
        """Migrations lock per transaction, so any URL works; a direct one is preferred."""
        return self.listen_dsn or self.dsn


def migration_dsn(settings: Settings, dsn: str) -> str:
    """Where to migrate from (what Connections.migrate_dsn says, without looking for a
    pooler): listen_database_url when one is set beside a database_url, else dsn."""
    if settings.database_url is not None and settings.listen_database_url is not None:
        return settings.listen_database_url
    return dsn


def listen_impossible(settings: Settings) -> bool:
    """Whether no connection can LISTEN: the only URL goes through a transaction pooler."""
    return (
        settings.database_url is not None
        and settings.database_pooler == "transaction"
        and settings.listen_database_url is None
    )


def connections(settings: Settings, dsn: str) -> Connections:
    """Decide, once at start, where each kind of connection goes; dsn is database_url's, or the
    embedded database's. With database_pooler=auto this opens one connection to look for a
    pooler; whatever it finds, or what LISTEN cannot do, is logged here."""
    if settings.database_url is None:  # the embedded PostgreSQL: nothing is in between
        return Connections(dsn, dsn, prepare=True)
    direct = settings.listen_database_url
    if listen_impossible(settings):
        log.warning("%s", LISTEN_OFF)
        return Connections(dsn, None, prepare=False)
    if settings.database_pooler == "transaction":
        if direct is not None and through_pooler(direct, settings.connect_timeout_seconds):
            log.warning(
                "SESSIONFLOW_LISTEN_DATABASE_URL reaches PostgreSQL through a connection "
                "pooler too: LISTEN works through one only in session mode. If live updates "
                "never come, point it at PostgreSQL itself"
            )
        return Connections(dsn, direct, prepare=False)
    if settings.database_pooler == "auto" and through_pooler(dsn, settings.connect_timeout_seconds):
        if direct is None:
            log.warning(
                "SESSIONFLOW_DATABASE_URL reaches PostgreSQL through a connection pooler: "
                "prepared statements are off. If it pools by transaction (PgBouncer "
                "pool_mode=transaction), LISTEN cannot work through it and live updates would "
                "never come: set SESSIONFLOW_DATABASE_POOLER=transaction and "
                "SESSIONFLOW_LISTEN_DATABASE_URL to a direct connection to PostgreSQL"
            )
        else:
            log.info(
                "SESSIONFLOW_DATABASE_URL reaches PostgreSQL through a connection pooler: "
                "prepared statements are off; LISTEN uses SESSIONFLOW_LISTEN_DATABASE_URL"
            )
        return Connections(dsn, direct or dsn, prepare=False)
    return Connections(dsn, direct or dsn, prepare=True)


def through_pooler(dsn: str, timeout: float) -> bool:
    """Whether dsn reaches PostgreSQL through a connection pooler. A pooler answers a new
    connection with a process id (part of the cancel key) of its own making, never the one of
    the server process that later runs the queries. False if the database cannot be asked:
    whatever connects next says why."""
    try:
        with psycopg.connect(
            dsn, autocommit=True, prepare_threshold=None, connect_timeout=max(1, round(timeout))
        ) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            return row is None or row[0] != conn.info.backend_pid
    except psycopg.Error as exc:
        log.debug("could not look for a connection pooler: %s", first_line(exc))
        return False
