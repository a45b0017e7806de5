"""The pool hands a connection that came back a moment ago straight out again, and asks the
server about one that has been idle longer (sessionflow.db.FRESH_SECONDS): a connection the
server dropped meanwhile is replaced, never handed to a request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from sessionflow import db


@asynccontextmanager
async def pool_of_one(db_dsn: str) -> AsyncIterator[AsyncConnectionPool]:
    """The server's pool, one connection, so that each checkout is the same connection."""
    pool = db.make_pool(db_dsn, min_size=1, max_size=1, timeout=10)
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


async def last_query(db_dsn: str, pid: int) -> str:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def test_a_connection_back_a_moment_ago_is_handed_out_without_a_check_and_an_idle_one_with(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "FRESH_SECONDS", 0.5)
    async with pool_of_one(db_dsn) as pool:
        async with pool.connection() as conn:
            await conn.execute("SELECT 'marker'")
            pid = conn.info.backend_pid
        async with pool.connection() as conn:
            assert conn.info.backend_pid == pid
            assert await last_query(db_dsn, pid) == "SELECT 'marker'"  # no check was sent
        await asyncio.sleep(0.6)
        async with pool.connection() as conn:
            assert conn.info.backend_pid == pid
            assert await last_query(db_dsn, pid) == ""  # the check's empty query


async def test_a_connection_the_server_dropped_while_idle_is_replaced(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "FRESH_SECONDS", 0.2)
    async with pool_of_one(db_dsn) as pool:
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await asyncio.sleep(0.3)
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
            assert conn.info.backend_pid != pid
