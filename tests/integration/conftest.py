"""Fixtures of the integration tests that run a real Worker in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest

from sessionflow.db import make_pool
from sessionflow.settings import Settings
from sessionflow.storage import ObjectStore, open_store
from sessionflow.worker.runner import Worker

StartWorker = Callable[..., Awaitable[Worker]]

OWNER = "alice"
TERMINAL = {"parsed", "summarized", "archived", "failed"}


@pytest.fixture
def worker_settings(settings: Settings) -> Settings:
    """Settings with everything that waits made short, so each test stays fast."""
    return settings.model_copy(
        update={
            "worker_poll_seconds": 0.5,
            "worker_lease_seconds": 1.5,
            "worker_retry_base_seconds": 0.05,
            "worker_retry_max_seconds": 0.2,
            "worker_ping_seconds": 0.5,
            "worker_reconnect_max_seconds": 0.5,
            "worker_shutdown_grace_seconds": 5.0,
            "connect_timeout_seconds": 5.0,
            # Threads start at once; the tests of the default (processes) ask for it.
            "worker_parser": "thread",
        }
    )


@pytest.fixture
async def start_worker(worker_settings: Settings, db_dsn: str) -> AsyncIterator[StartWorker]:
    """start_worker(store=None, **setting overrides) -> a started Worker, stopped at the end."""
    started: list[tuple[Worker, Any]] = []

    async def start(store: ObjectStore | None = None, **overrides: Any) -> Worker:
        settings = worker_settings.model_copy(update=overrides)
        pool = make_pool(db_dsn, min_size=1, max_size=6, timeout=5)
        await pool.open(wait=True)
        worker = Worker(
            settings,
            dsn=db_dsn,
            pool=pool,
            store=store or open_store(settings.resolved_storage_url),
        )
        await worker.start()
        started.append((worker, pool))
        return worker

    yield start
    for worker, pool in started:
        await worker.stop(grace=0)
        await pool.close()


def row(db_dsn: str, session_id: str) -> dict[str, Any]:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT lifecycle, parse_status, error, attempts, parse_result, summary, "
            "s.lease_token, lease_owner, run_after > now() AS delayed "
            "FROM sessions AS s JOIN jobs USING (owner, id) WHERE owner = %s AND id = %s",
            (OWNER, session_id),
        )
        values = cur.fetchone()
        assert values is not None, f"no session {session_id}"
        return dict(zip([d.name for d in cur.description or ()], values, strict=True))


async def wait_for(
    db_dsn: str,
    session_id: str,
    states: set[str] = TERMINAL,
    *,
    within: float = 30,
) -> dict[str, Any]:
    """The session's row once its lifecycle is one of states (a timeout, not a timing)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        current = row(db_dsn, session_id)
        if current["lifecycle"] in states:
            return current
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{session_id} still {current['lifecycle']}: {current}")
        await asyncio.sleep(0.05)
