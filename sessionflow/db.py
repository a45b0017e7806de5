"""Connections and schema: the pool the server and workers share, and the migration runner."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool

from sessionflow.queries import Q, sql_dir

log = logging.getLogger(__name__)

# Any constant both replicas agree on: they serialise on it while migrating.
MIGRATION_LOCK_KEY = 0x5E55_10F1_0000_0001

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path


def migrations() -> list[Migration]:
    """The numbered files of sql/, in the order they apply."""
    files = sorted(p for p in sql_dir().glob("[0-9][0-9][0-9]_*.sql"))
    return [Migration(p.stem, p) for p in files]


def migrate(dsn: str) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied.

    Safe to run from several processes at once: they queue on an advisory lock, and each
    migration records itself first inside its own transaction, so a racing duplicate would
    fail on the primary key instead of applying twice."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(_CREATE_LEDGER)
            done = {row[0] for row in conn.execute(Q.migrations_applied)}
            for migration in migrations():
                if migration.name in done:
                    continue
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO schema_migrations (name) VALUES (%s)", (migration.name,)
                    )
                    conn.execute(migration.path.read_bytes())
                applied_now.append(migration.name)
                log.info("applied migration %s", migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now


async def pending_migrations(pool: AsyncConnectionPool, wait: float = 2.0) -> list[str]:
    async with pool.connection(timeout=wait) as conn:
        cur = await conn.execute(Q.migrations_applied)
        done = {row[0] for row in await cur.fetchall()}
    return [m.name for m in migrations() if m.name not in done]


def make_pool(dsn: str, *, min_size: int, max_size: int, timeout: float) -> AsyncConnectionPool:
    """A closed pool; the caller opens it (`await pool.open()`) inside its event loop."""
    return AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        open=False,
        kwargs={"autocommit": True},
        check=AsyncConnectionPool.check_connection,
        name="sessionflow",
    )
